"""The API dialects: the OpenAI app (chat, completions, models), Anthropic Messages and the
Responses API."""
