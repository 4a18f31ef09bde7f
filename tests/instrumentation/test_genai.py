"""GenAI request and response attributes read from request bodies and responses
(``llm_governor.instrumentation._genai``), without an SDK in the way: the request's own
values (never the governor's bounds), operation names per endpoint, endpoints, the
prompt-cache TTL a request may write, and response facts from dicts and Gemini bodies.
"""

from __future__ import annotations

from llm_governor.instrumentation._genai import (
    anthropic_request,
    cache_ttl,
    gemini_info,
    gemini_request,
    info,
    openai_request,
    server_attributes,
)


def test_server_attributes() -> None:
    assert server_attributes("https://api.openai.com/v1") == {
        "server.address": "api.openai.com", "server.port": 443}
    assert server_attributes("http://127.0.0.1:8080/v1/") == {
        "server.address": "127.0.0.1", "server.port": 8080}
    assert server_attributes("http://user:secret@host/v1") == {"server.address": "host",
                                                               "server.port": 80}
    assert server_attributes(None) == {} and server_attributes("not a url") == {}


def test_openai_request_is_what_was_asked() -> None:
    chat = openai_request("chat", {"model": "m", "max_completion_tokens": 50, "n": 3,
                                   "response_format": {"type": "json_object"},
                                   "stream": True, "stop": "END", "service_tier": "flex"})
    assert chat == {"gen_ai.operation.name": "chat", "openai.api.type": "chat_completions",
                    "gen_ai.request.max_tokens": 50, "gen_ai.request.choice.count": 3,
                    "gen_ai.output.type": "json", "gen_ai.request.stream": True,
                    "gen_ai.request.stop_sequences": ["END"],
                    "openai.request.service_tier": "flex"}
    responses = openai_request("responses", {"max_output_tokens": 9,
                                             "text": {"format": {"type": "json_schema"}}})
    assert responses["gen_ai.operation.name"] == "chat"
    assert responses["openai.api.type"] == "responses"
    assert responses["gen_ai.output.type"] == "json"
    assert openai_request("embeddings", {"dimensions": 8, "encoding_format": "base64"}) == {
        "gen_ai.operation.name": "embeddings", "gen_ai.embeddings.dimension.count": 8,
        "gen_ai.request.encoding_formats": ["base64"]}
    assert "gen_ai.request.choice.count" not in openai_request("chat", {"n": 1})


def test_anthropic_and_gemini_requests() -> None:
    assert anthropic_request("chat", {"max_tokens": 64, "stop_sequences": ["x"],
                                      "top_k": 5}) == {
        "gen_ai.operation.name": "chat", "gen_ai.request.max_tokens": 64,
        "gen_ai.request.stop_sequences": ["x"], "gen_ai.request.top_k": 5.0}
    body = {"generationConfig": {"maxOutputTokens": 10, "candidateCount": 2, "topK": 4,
                                 "topP": 0.5, "responseMimeType": "application/json",
                                 "thinkingConfig": {"thinkingBudget": 1000}}}
    assert gemini_request("generate_content", body, stream=False) == {
        "gen_ai.operation.name": "generate_content", "gen_ai.request.max_tokens": 10,
        "gen_ai.request.choice.count": 2, "gen_ai.request.top_k": 4.0,
        "gen_ai.request.top_p": 0.5, "gen_ai.output.type": "json"}


def test_cache_ttl_is_the_longest_a_request_may_write() -> None:
    assert cache_ttl({"messages": [{"role": "user", "content": "hi"}]}) is None
    five = {"system": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}]}
    assert cache_ttl(five) == "5m"
    hour = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "b", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}]}
    assert cache_ttl(hour) == "1h"
    assert cache_ttl({"cache_control": {"type": "ephemeral", "ttl": "1h"}}) == "1h"
    assert cache_ttl({"tools": [{"name": "t", "cache_control": {"type": "ephemeral"}}]}) == "5m"


def test_response_info() -> None:
    chat = {"id": "chatcmpl-1", "model": "gpt-4o-2024", "system_fingerprint": "fp_1",
            "choices": [{"finish_reason": "stop"}, {"finish_reason": "length"}]}
    about = info(chat)
    assert about is not None
    assert (about.id, about.model, about.finish_reasons, about.system_fingerprint) == (
        "chatcmpl-1", "gpt-4o-2024", ("stop", "length"), "fp_1")
    message = info({"id": "msg_1", "model": "claude", "stop_reason": "end_turn"})
    assert message is not None and message.finish_reasons == ("end_turn",)
    response = info({"id": "resp_1", "object": "response", "status": "incomplete"})
    assert response is not None and response.finish_reasons == ("incomplete",)
    assert info(None) is None
    body = '{"candidates": [{"finishReason": "STOP"}], "modelVersion": "gemini-2.5", ' \
           '"responseId": "abc"}'
    found, reasons = gemini_info(body)
    assert (found.id, found.model, found.finish_reasons, reasons) == (
        "abc", "gemini-2.5", ("STOP",), ("STOP",))
