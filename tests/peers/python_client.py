"""Real MCP peer for the end-to-end tests: the official Python SDK's streamable-HTTP client.

Usage: python_client.py GATEWAY_URL   (token in $PORTCULLIS_TOKEN)
Connects through the gateway with an Authorization header, lists tools and resources, calls
two tools, and prints one JSON line with what it saw.
"""

import asyncio
import json
import os
import sys

import httpx
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client


async def main(url: str, token: str) -> None:
    http = httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    async with http:
        async with streamable_http_client(url, http_client=http) as (read, write, *_):
            async with ClientSession(read, write) as session:
                await session.initialize()
                tools = await session.list_tools()
                resources = await session.list_resources()
                simple = await session.call_tool("fx__test_simple_text", {})
                echo = await session.call_tool("fx__echo", {"text": "from python"})
                report = {
                    "tools": [t.name for t in tools.tools],
                    "resources": [str(r.uri) for r in resources.resources],
                    "simple_text": simple.content[0].text,
                    "echo": echo.content[0].text,
                }
                print(json.dumps(report))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], os.environ["PORTCULLIS_TOKEN"]))
