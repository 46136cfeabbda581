"""Audio to features: corpus readers (a manifest of path, label, speaker), MFCCs, feature files, splits, the
generated example corpus."""
