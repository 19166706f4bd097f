#!/usr/bin/env python3
"""Writes claude_code_request.json: a request shaped like the ones Claude Code sends to
/v1/messages (a system prompt in text blocks with cache_control, ~20 client tools with nested JSON
schemas, a multi-turn history with thinking, tool_use and tool_result blocks, streaming). Authored
for m2's tests from the public shape of the Anthropic Messages API; small enough for the demo model's
4096-token context. Run: python3 make_claude_code_request.py > claude_code_request.json"""
import json

def tool(name, desc, props, required):
    return {"name": name, "description": desc,
            "input_schema": {"type": "object", "properties": props, "required": required,
                             "additionalProperties": False, "$schema": "http://json-schema.org/draft-07/schema#"}}

s = {"type": "string"}
tools = [
    tool("Task", "Launch an agent for a multi-step task.", {"description": s, "prompt": s, "subagent_type": s}, ["description", "prompt"]),
    tool("Bash", "Run a shell command.", {"command": s, "timeout": {"type": "number"}, "run_in_background": {"type": "boolean"}}, ["command"]),
    tool("Glob", "Find files by pattern.", {"pattern": s, "path": s}, ["pattern"]),
    tool("Grep", "Search file contents.", {"pattern": s, "path": s, "glob": s,
         "output_mode": {"type": "string", "enum": ["content", "files_with_matches", "count"]}, "-n": {"type": "boolean"}}, ["pattern"]),
    tool("LS", "List a directory.", {"path": s, "ignore": {"type": "array", "items": s}}, ["path"]),
    tool("Read", "Read a file.", {"file_path": s, "offset": {"type": "number"}, "limit": {"type": "number"}}, ["file_path"]),
    tool("Edit", "Replace text in a file.", {"file_path": s, "old_string": s, "new_string": s, "replace_all": {"type": "boolean", "default": False}},
         ["file_path", "old_string", "new_string"]),
    tool("MultiEdit", "Several edits to one file.", {"file_path": s, "edits": {"type": "array", "minItems": 1, "items": {
         "type": "object", "properties": {"old_string": s, "new_string": s, "replace_all": {"type": "boolean"}},
         "required": ["old_string", "new_string"], "additionalProperties": False}}}, ["file_path", "edits"]),
    tool("Write", "Write a file.", {"file_path": s, "content": s}, ["file_path", "content"]),
    tool("NotebookEdit", "Edit a notebook cell.", {"notebook_path": s, "cell_id": s, "new_source": s,
         "cell_type": {"type": "string", "enum": ["code", "markdown"]}, "edit_mode": {"type": "string", "enum": ["replace", "insert", "delete"]}},
         ["notebook_path", "new_source"]),
    tool("WebFetch", "Fetch a URL and answer about it.", {"url": {"type": "string", "format": "uri"}, "prompt": s}, ["url", "prompt"]),
    tool("TodoWrite", "Update the task list.", {"todos": {"type": "array", "items": {"type": "object", "properties": {
         "content": {"type": "string", "minLength": 1}, "status": {"type": "string", "enum": ["pending", "in_progress", "completed"]},
         "activeForm": s}, "required": ["content", "status", "activeForm"], "additionalProperties": False}}}, ["todos"]),
    tool("WebSearch", "Search the web.", {"query": {"type": "string", "minLength": 2}, "allowed_domains": {"type": "array", "items": s},
         "blocked_domains": {"type": "array", "items": s}}, ["query"]),
    tool("BashOutput", "Read a background shell's output.", {"bash_id": s, "filter": s}, ["bash_id"]),
    tool("KillShell", "Kill a background shell.", {"shell_id": s}, ["shell_id"]),
    tool("SlashCommand", "Run a slash command.", {"command": s}, ["command"]),
    tool("ExitPlanMode", "Leave plan mode with a plan.", {"plan": s}, ["plan"]),
    tool("mcp__github__create_issue", "Open a GitHub issue.", {"owner": s, "repo": s, "title": s, "body": s,
         "labels": {"type": "array", "items": s}, "assignees": {"type": "array", "items": s}}, ["owner", "repo", "title"]),
    tool("mcp__github__search_code", "Search code on GitHub.", {"q": s, "page": {"type": "integer", "minimum": 1},
         "per_page": {"type": "integer", "maximum": 100}}, ["q"]),
    tool("mcp__db__query", "Run a read-only SQL query.", {"sql": s, "params": {"type": "array", "items": {"anyOf": [s, {"type": "number"}, {"type": "null"}]}},
         "options": {"type": "object", "properties": {"timeout_ms": {"type": "integer"}, "row_limit": {"type": "integer"}}}}, ["sql"]),
]

system = [
    {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.", "cache_control": {"type": "ephemeral"}},
    {"type": "text", "text": "You are an interactive CLI tool that helps users with software engineering tasks. Use the tools "
     "available to you. Keep answers short. Do not add comments unless asked. Prefer editing files to creating them. "
     "When you run a non-trivial command, explain what it does.\n\n<env>\nWorking directory: /home/user/project\nIs directory a "
     "git repo: Yes\nPlatform: linux\nToday's date: 2026-11-30\n</env>", "cache_control": {"type": "ephemeral"}},
]

messages = [
    {"role": "user", "content": [{"type": "text", "text": "<system-reminder>The task list is empty.</system-reminder>"},
                                 {"type": "text", "text": "The tests in utils.py fail on empty input. Fix it."}]},
    {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "I should read utils.py first.", "signature": "sig-1"},
        {"type": "text", "text": "Let me look at the file."},
        {"type": "tool_use", "id": "toolu_01A", "name": "Read", "input": {"file_path": "/home/user/project/utils.py"}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01A", "content":
        "     1\tdef mean(xs):\n     2\t    return sum(xs) / len(xs)\n     3\t\n     4\tdef median(xs):\n     5\t    s = sorted(xs)\n"
        "     6\t    return s[len(s) // 2]\n"}]},
    {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_01B", "name": "MultiEdit", "input": {"file_path": "/home/user/project/utils.py", "edits": [
            {"old_string": "    return sum(xs) / len(xs)", "new_string": "    return sum(xs) / len(xs) if xs else 0.0"},
            {"old_string": "    s = sorted(xs)\n", "new_string": "    if not xs:\n        return 0.0\n    s = sorted(xs)\n"}]}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01B", "content": [{"type": "text", "text": "Applied 2 edits."}]}]},
    {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_01C", "name": "Bash", "input": {"command": "python -m pytest -q tests/test_utils.py", "timeout": 120000}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01C", "is_error": True,
                                  "content": "FAILED tests/test_utils.py::test_median_even - assert 2 == 2.5\n1 failed, 5 passed"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "The median of an even-length list must average the middle two."}]},
    {"role": "user", "content": "Fix that too, then run the tests again."},
]

print(json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 32, "stream": True, "system": system, "tools": tools,
                  "tool_choice": {"type": "auto"}, "messages": messages, "metadata": {"user_id": "user_0123"},
                  "thinking": {"type": "enabled", "budget_tokens": 1024}, "temperature": 1}, indent=1))
