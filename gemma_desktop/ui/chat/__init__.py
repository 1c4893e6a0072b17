"""The chat page: the transcript, the composer, Markdown rendering and the panel around them."""
