"""The weather-tool round trip with the official `openai` SDK, shared by `scripts/eval-tools`
(all 20 questions, a score) and `tests/e2e/test_tools_sdk.py` (a few, asserted).

One `get_weather(city, unit)` function tool. For each question `tool_choice: "auto"` must
either call the tool with valid arguments (a JSON object, the city asked about, a known unit)
or answer directly, as the question needs. When it calls, the tool result (a made-up
temperature, different per city) goes back as a `role: "tool"` message and the final answer
must use it (contain the temperature). Questions about two cities may be answered with both
calls at once (parallel) or one after the other: up to MAX_ROUNDS answers are followed.

Not a pytest module (no `test_` prefix): nothing here is collected on its own.
"""

import json
import re
import time

import openai

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city name, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"],
                         "description": "Temperature unit (default celsius)"},
            },
            "required": ["city"],
        },
    },
}
TOOLS = [WEATHER_TOOL]
UNITS = ("celsius", "fahrenheit")
# The optional system message (--system instructed): without one, the Qwen2.5 template uses its
# default system line, and Qwen2.5-Coder-1.5B answers a tool result by calling the tool again.
SYSTEM_PROMPT = ("You are a helpful assistant. Call a tool only when the question needs live data "
                 "it provides. When a <tool_response> is given, answer the user in plain text "
                 "using it; do not call the tool again.")
MAX_ROUNDS = 3

# city (lower-case aliases) -> (temperature in celsius, condition). Distinct temperatures, so
# that an answer containing one must have read that city's tool result.
WEATHER = [
    (("paris",), 18, "partly cloudy"),
    (("tokyo",), 26, "light rain"),
    (("berlin",), 9, "overcast"),
    (("phoenix",), 41, "sunny"),
    (("london",), 14, "drizzle"),
    (("shanghai", "上海"), 22, "humid, cloudy"),
    (("beijing", "北京"), 3, "clear"),
    (("sydney",), 24, "sunny"),
    (("madrid",), 31, "clear"),
    (("rome", "roma"), 27, "sunny"),
    (("new york",), 12, "windy"),
    (("chicago",), 7, "snow showers"),
]

# id, category, language, the cities the question needs (empty: answer directly), question.
# Categories: "single" (one call), "multi" (two cities: two calls, parallel or sequential),
# "direct" (no tool needed; some mention weather on purpose).
QUESTIONS = [
    ("paris", "single", "en", ["paris"], "What's the weather like in Paris right now?"),
    ("tokyo", "single", "en", ["tokyo"], "Is it raining in Tokyo at the moment?"),
    ("berlin", "single", "en", ["berlin"],
     "I'm flying to Berlin tonight. What is the current temperature there in celsius?"),
    ("phoenix-f", "single", "en", ["phoenix"], "How hot is it in Phoenix today, in fahrenheit?"),
    ("london", "single", "en", ["london"], "Should I take an umbrella in London today? Check the weather."),
    ("sydney", "single", "en", ["sydney"], "Check the current weather in Sydney for me."),
    ("shanghai-zh", "single", "zh", ["shanghai"], "现在上海的天气怎么样？"),
    ("beijing-zh", "single", "zh", ["beijing"], "北京今天多少度？"),
    ("madrid-rome", "multi", "en", ["madrid", "rome"], "Compare the current weather in Madrid and Rome."),
    ("ny-chicago", "multi", "en", ["new york", "chicago"],
     "What is the weather in New York and in Chicago right now?"),
    ("capital", "direct", "en", [], "What is the capital of France?"),
    ("reverse", "direct", "en", [], "Write a Python function that reverses a string."),
    ("multiply", "direct", "en", [], "What is 17 times 23?"),
    ("rainbow", "direct", "en", [], "Explain what a rainbow is in one sentence."),
    ("spanish", "direct", "en", [], "Translate 'good morning' into Spanish."),
    ("word-weather", "direct", "en", [], "What does the English word 'weather' mean? Define it briefly."),
    ("shakespeare", "direct", "en", [], "Who wrote Romeo and Juliet?"),
    ("winter", "direct", "en", [], "In general, why is it colder in winter than in summer?"),
    ("ml-zh", "direct", "zh", [], "用一句话解释什么是机器学习。"),
    ("thanks-zh", "direct", "zh", [], "请把“谢谢”翻译成英文。"),
]


# A function call written out as text ({"name": "...", "arguments": ...}, in any wrapping):
# for a question that needs no tool it is not a direct answer, and for one that does it is a
# call the server did not read.
CALL_TEXT = re.compile(r'\{\s*"name"\s*:\s*"[^"]*"\s*,\s*"(arguments|parameters)"\s*:')
# The tool list (or a made-up tool definition) written back: not an answer either.
TOOL_LIST_TEXT = re.compile(r'"type"\s*:\s*"function"\s*,\s*"function"\s*:')


def lookup(city):
    """The weather row for a city name as the model wrote it, or None."""
    c = (city or "").strip().lower()
    for aliases, temp, cond in WEATHER:
        if any(a in c for a in aliases):
            return aliases[0], temp, cond
    return None


def tool_result(args):
    """What get_weather returns for parsed arguments: (key of the city or None, JSON text,
    the temperature as it is written in the result)."""
    unit = args.get("unit") or "celsius"
    row = lookup(args.get("city"))
    key, temp_c, cond = row if row else (None, 20, "fair")
    temp = round(temp_c * 9 / 5 + 32) if unit == "fahrenheit" else temp_c
    body = {"city": args.get("city"), "temperature": temp, "unit": unit, "condition": cond}
    return key, json.dumps(body, ensure_ascii=False), str(temp)


def check_args(raw):
    """(parsed arguments, None) when `raw` is a valid get_weather argument object, else
    (None, why)."""
    try:
        args = json.loads(raw)
    except (TypeError, ValueError) as e:
        return None, f"arguments are not JSON ({e}): {raw!r}"
    if not isinstance(args, dict):
        return None, f"arguments are not an object: {raw!r}"
    if not isinstance(args.get("city"), str) or not args["city"].strip():
        return None, f"no city: {raw!r}"
    if "unit" in args and args["unit"] not in UNITS:
        return None, f"unit {args['unit']!r} not in {UNITS}"
    extra = set(args) - {"city", "unit"}
    if extra:
        return None, f"unknown arguments {sorted(extra)}: {raw!r}"
    return args, None


def complete(client, model, messages, sampling, stream, max_tokens, seed):
    """One chat completion; returns a dict with content, tool_calls [(id, name, arguments)],
    finish_reason, completion_tokens and the assistant message to send back."""
    kw = dict(model=model, messages=messages, tools=TOOLS, max_tokens=max_tokens, seed=seed)
    if sampling == "greedy":
        kw["temperature"] = 0
    if not stream:
        r = client.chat.completions.create(**kw)
        c = r.choices[0]
        calls = [(t.id, t.function.name, t.function.arguments) for t in (c.message.tool_calls or [])]
        return {"content": c.message.content, "tool_calls": calls, "finish_reason": c.finish_reason,
                "completion_tokens": r.usage.completion_tokens,
                "message": c.message.model_dump(exclude_none=True)}
    content, calls, finish, tokens = [], {}, None, None
    for ch in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        if ch.usage is not None:
            tokens = ch.usage.completion_tokens
        if not ch.choices:
            continue
        d = ch.choices[0].delta
        if d.content:
            content.append(d.content)
        for t in d.tool_calls or []:
            slot = calls.setdefault(t.index, {"id": None, "name": "", "arguments": ""})
            if t.id:
                slot["id"] = t.id
            if t.function and t.function.name:
                slot["name"] += t.function.name
            if t.function and t.function.arguments:
                slot["arguments"] += t.function.arguments
        if ch.choices[0].finish_reason:
            finish = ch.choices[0].finish_reason
    text = "".join(content) if content else None
    call_list = [(calls[i]["id"], calls[i]["name"], calls[i]["arguments"]) for i in sorted(calls)]
    msg = {"role": "assistant"}
    if text is not None:
        msg["content"] = text
    if call_list:
        msg["tool_calls"] = [{"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                             for i, n, a in call_list]
    return {"content": text, "tool_calls": call_list, "finish_reason": finish,
            "completion_tokens": tokens, "message": msg}


def run_question(client, model, q, sampling="greedy", stream=False, max_tokens=160, seed=1,
                 system=None):
    """Run one question through the round trip (after a `system` message when given);
    returns a record (see the keys below)."""
    qid, category, lang, cities, text = q
    rec = {"id": qid, "category": category, "lang": lang, "expected": cities or "direct",
           "sampling": sampling, "stream": stream, "system": bool(system), "choice_ok": False,
           "roundtrip_ok": None, "calls": [], "parallel": False, "problems": [], "answers": [],
           "tokens": 0}
    t0 = time.time()
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": text})
    covered, wanted_temps, args_ok = set(), [], True
    for round_no in range(MAX_ROUNDS):
        try:
            r = complete(client, model, messages, sampling, stream, max_tokens, seed + round_no)
        except openai.APIError as e:
            # A server error is a wrong answer, recorded with what the server said.
            body = getattr(e, "body", None)
            rec["problems"].append(f"{type(e).__name__} in answer {round_no + 1}: {e} {body or ''}")
            rec["answers"].append({"content": None, "tool_calls": [], "finish_reason": "error"})
            break
        rec["tokens"] += r["completion_tokens"] or 0
        rec["answers"].append({"content": r["content"], "tool_calls": r["tool_calls"],
                               "finish_reason": r["finish_reason"]})
        if r["tool_calls"] and r["finish_reason"] != "tool_calls":
            rec["problems"].append(f"tool_calls with finish_reason {r['finish_reason']!r}")
        if not r["tool_calls"] and r["finish_reason"] == "tool_calls":
            rec["problems"].append("finish_reason tool_calls without tool_calls")
        if r["content"] and ("<tool_call>" in r["content"] or "</tool_call>" in r["content"]):
            rec["problems"].append("call markup left in content")
        if not r["tool_calls"]:
            break
        if round_no == 0 and len(r["tool_calls"]) > 1:
            rec["parallel"] = True
        messages.append(r["message"])
        for call_id, name, raw in r["tool_calls"]:
            rec["calls"].append({"name": name, "arguments": raw})
            args, why = check_args(raw) if name == "get_weather" else (None, f"unknown function {name}")
            if args is None:
                args_ok = False
                rec["problems"].append(why)
                result = json.dumps({"error": why})
            else:
                key, result, temp = tool_result(args)
                if key is not None:
                    covered.add(key)
                    wanted_temps.append(temp)
            messages.append({"role": "tool", "tool_call_id": call_id, "content": result})
        if not cities:
            break  # a call for a direct question is already wrong; no need to go on
    else:
        rec["problems"].append(f"still calling tools after {MAX_ROUNDS} answers")
    final = rec["answers"][-1]
    if final["finish_reason"] == "error":
        rec["seconds"] = round(time.time() - t0, 1)
        return rec
    if cities:
        first_called = bool(rec["answers"][0]["tool_calls"])
        if not first_called and CALL_TEXT.search(rec["answers"][0]["content"] or ""):
            rec["problems"].append("a call written as text came back as content")
        rec["choice_ok"] = first_called and args_ok and covered >= set(cities)
        if first_called and not covered >= set(cities):
            rec["problems"].append(f"cities called {sorted(covered)} but needed {cities}")
        if first_called:
            answer = final["content"] or ""
            rec["roundtrip_ok"] = (not final["tool_calls"]) and bool(wanted_temps) and all(
                t in answer for t in wanted_temps)
            if not rec["roundtrip_ok"] and not final["tool_calls"]:
                rec["problems"].append(f"final answer lacks the temperatures {wanted_temps}")
    else:
        first = rec["answers"][0]
        text = first["content"] or ""
        if not first["tool_calls"] and CALL_TEXT.search(text):
            rec["problems"].append("answered with a call written as text (not a direct answer)")
        elif not first["tool_calls"] and TOOL_LIST_TEXT.search(text):
            rec["problems"].append("answered with a tool definition (not a direct answer)")
        rec["choice_ok"] = (not first["tool_calls"] and bool(text.strip())
                            and not CALL_TEXT.search(text) and not TOOL_LIST_TEXT.search(text))
    rec["seconds"] = round(time.time() - t0, 1)
    return rec


def summarize(records):
    """Counts per category and language, and over all questions."""
    def count(rs):
        tool = [r for r in rs if r["roundtrip_ok"] is not None]
        return {"n": len(rs), "choice_ok": sum(r["choice_ok"] for r in rs),
                "roundtrip_n": len(tool), "roundtrip_ok": sum(bool(r["roundtrip_ok"]) for r in tool)}
    out = {"all": count(records)}
    for cat in ("single", "multi", "direct"):
        out[cat] = count([r for r in records if r["category"] == cat])
    for lang in ("en", "zh"):
        out[lang] = count([r for r in records if r["lang"] == lang])
    out["parallel"] = sum(r["parallel"] for r in records if r["category"] == "multi")
    out["problems"] = sum(len(r["problems"]) for r in records)
    out["seconds"] = round(sum(r["seconds"] for r in records), 1)
    out["tokens"] = sum(r["tokens"] for r in records)
    return out
