"""Raw data: download, readers for ReDial / INSPIRED / IARD, and the shared instance builder."""
