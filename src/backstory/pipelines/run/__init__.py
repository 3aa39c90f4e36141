"""The run template: a text variant's token export, and one run's training and evaluation."""
