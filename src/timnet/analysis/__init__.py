"""What a trained model tells: evaluation, cross-corpus scores, t-SNE."""
