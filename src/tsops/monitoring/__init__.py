"""Online accuracy, drift, their history and reports."""
