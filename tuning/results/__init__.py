"""What a finished sweep hands over: one config trained and tested (``train``), the final selection
over seeds (``selection``), the whole ``tunebert tune`` pipeline, benchmark jobs and output folders."""
