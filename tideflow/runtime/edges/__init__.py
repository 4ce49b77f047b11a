"""What travels on a graph edge: the Arrow schemas, the row and batch builders and readers, and
the one shape of an error row."""
