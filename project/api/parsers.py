from rest_framework.parsers import JSONParser


class AnyContentTypeJSONParser(JSONParser):
    """Parse the body as JSON whatever Content-Type says: `curl -d` sends form encoding by default,
    and the LangGraph server accepts JSON under any content type."""

    media_type = "*/*"
