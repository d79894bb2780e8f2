"""pantry: answers which version of its dependency it sees."""
