"""One replica of one function: triggers feeding pools of worker processes."""
