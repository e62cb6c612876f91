"""The API dialects: OpenAI (chat, completions), Anthropic Messages and Responses routes, and a
generation's way from validation to its last byte."""
