"""What every layer uses: settings (`config`), errors, validation, atomic files, locks, devices, metrics and
the workbooks and figures they are written to (`report`). Imports nothing else of timnet."""
