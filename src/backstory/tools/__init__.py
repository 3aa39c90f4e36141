"""Tools around the project: the dvc.yaml generator and the `backstory` command line."""
