#!/usr/bin/env python3
"""Checks `pivot serve` with the real `openai` Python client.

    PY=~/.venvs/pivot-ref/bin/python      # pip install -r Tools/assets/requirements-serve.txt
    .build/release/pivot serve --model Checkpoints/demo-2-instruct/final --port 18080 &
    $PY Tools/serve_check.py --base-url http://127.0.0.1:18080/v1 --image shape.jpg
    $PY Tools/serve_check.py --base-url http://127.0.0.1:18080/v1 --image shape.jpg --expect-text chat.txt
    $PY Tools/serve_check.py --base-url http://127.0.0.1:18080/v1 --image shape.jpg --load --requests 200 --concurrency 8

The default mode lists the models, asks about the image without and with streaming (the streamed
deltas must join to the same greedy answer), asks a text-only question, and sends requests that
must fail with the right `openai` exception (unknown model, negative max_tokens, an image by
https URL, which Pivot never fetches), each followed by a request that must still succeed.
`--expect-text` compares the greedy answer with a file, e.g. `pivot chat --prompt`'s output.

`--load` first answers each of a few distinct requests alone, then sends `--requests` of them
`--concurrency` at a time, streaming and not, and checks that every answer equals the answer
its request got alone; then it measures decode tokens/s with 1 and with 4 streams at once
(`--scaling-only`: that alone, text only, e.g. on a model that writes longer answers).
Any failed check exits 1 with a message; a JSON summary line ends the output.
"""
import argparse
import base64
import concurrent.futures
import json
import math
import os
import random
import sys
import threading
import time

VENV = os.path.expanduser("~/.venvs/pivot-ref")
try:
    import openai
except ImportError:
    # Run as `Tools/serve_check.py`, the system Python lacks openai: the project's venv has it.
    if os.path.exists(os.path.join(VENV, "bin", "python")) and os.path.realpath(sys.prefix) != os.path.realpath(VENV):
        os.execv(os.path.join(VENV, "bin", "python"), [os.path.join(VENV, "bin", "python")] + sys.argv)
    sys.exit("serve_check: the openai package is missing: pip install -r Tools/assets/requirements-serve.txt")

MIME_BY_EXTENSION = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}

# Distinct requests for --load: English and Chinese, half about the image, half text only
# (the text-only ones name the shape in words, as the demo world's text conversations do).
LOAD_PROMPTS = [
    ("What color is the shape?", True),
    ("这个形状是什么颜色？", True),
    ("Describe the image.", True),
    ("A big red square. What size is the shape?", False),
    ("一个蓝色的十字形。这是什么形状？", False),
    ("A green circle. Describe the image.", False),
]
# Text only, so that the scaling measurement also runs on a text-only model (--scaling-only).
LONG_PROMPT = "Write a long story about a red circle and a blue square who travel the world together."


class CheckFailed(Exception):
    pass


class Checks:
    """Counts passed checks; the first failure stops the run with its message."""

    def __init__(self):
        self.passed = 0

    def check(self, condition, message):
        if not condition:
            raise CheckFailed(message)
        self.passed += 1


def image_data_uri(path):
    extension = os.path.splitext(path)[1].lower()
    if extension not in MIME_BY_EXTENSION:
        sys.exit("serve_check: --image must be .jpg, .jpeg, .png or .webp, not %r" % path)
    with open(path, "rb") as f:
        return "data:%s;base64,%s" % (MIME_BY_EXTENSION[extension], base64.b64encode(f.read()).decode("ascii"))


def user_message(prompt, image_uri=None):
    if image_uri is None:
        return {"role": "user", "content": prompt}
    # The image part first: Pivot trains with the image ahead of the question.
    return {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": image_uri}},
        {"type": "text", "text": prompt},
    ]}


def complete(client, model, messages, max_tokens, temperature=0.0):
    """One non-streaming request: (answer, finish_reason, usage, response)."""
    response = client.chat.completions.create(
        model=model, messages=messages, temperature=temperature, max_tokens=max_tokens)
    choice = response.choices[0]
    return choice.message.content, choice.finish_reason, response.usage, response


def stream(client, model, messages, max_tokens, temperature=0.0):
    """One streaming request with a usage chunk; times the first and the last content delta."""
    start = time.monotonic()
    chunks = client.chat.completions.create(
        model=model, messages=messages, temperature=temperature, max_tokens=max_tokens,
        stream=True, stream_options={"include_usage": True})
    pieces, times, finish_reason, usage = [], [], None, None
    for chunk in chunks:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta and choice.delta.content:
                times.append(time.monotonic())
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish_reason = choice.finish_reason
    return {"answer": "".join(pieces), "pieces": len(pieces), "finish_reason": finish_reason, "usage": usage,
            "start": start, "first": times[0] if times else None, "last": times[-1] if times else None,
            "times": times, "end": time.monotonic()}


def expect_error(checks, name, error_class, call):
    """The request must raise `error_class` with an OpenAI-shaped error body."""
    try:
        call()
        error = None
    except openai.APIStatusError as status_error:
        error = status_error
    checks.check(error is not None, "%s: expected openai.%s, but the request succeeded" % (name, error_class.__name__))
    body = error.body if isinstance(error.body, dict) else {}
    print("  %s -> %s %d: %s" % (name, type(error).__name__, error.status_code, body.get("message", error.body)))
    checks.check(isinstance(error, error_class), "%s: expected openai.%s, got %s (HTTP %d)" % (
        name, error_class.__name__, type(error).__name__, error.status_code))
    checks.check(isinstance(body.get("message"), str) and body["message"],
                 "%s: the error body has no message: %r" % (name, error.body))


def run_checks(args, client):
    checks = Checks()
    image_uri = image_data_uri(args.image)

    models = client.models.list()
    ids = [m.id for m in models.data]
    checks.check(ids, "GET /models listed no model")
    model = ids[0]
    print("models: %s (using %s)" % (", ".join(ids), model))

    messages = [user_message(args.prompt, image_uri)]
    answer, finish_reason, usage, response = complete(client, model, messages, args.max_tokens)
    print("non-streaming: %r" % answer)
    print("  finish_reason=%s usage: prompt %d, completion %d, total %d" % (
        finish_reason, usage.prompt_tokens, usage.completion_tokens, usage.total_tokens))
    checks.check(response.object == "chat.completion", "object is %r, not chat.completion" % response.object)
    checks.check(response.choices[0].message.role == "assistant", "the message's role is not assistant")
    checks.check(isinstance(answer, str) and answer, "the answer is empty")
    checks.check(usage.completion_tokens > 0, "usage.completion_tokens is %d" % usage.completion_tokens)
    checks.check(usage.prompt_tokens > 0, "usage.prompt_tokens is %d" % usage.prompt_tokens)
    checks.check(usage.total_tokens == usage.prompt_tokens + usage.completion_tokens,
                 "usage.total_tokens %d != prompt + completion" % usage.total_tokens)
    checks.check(finish_reason in ("stop", "length"), "finish_reason is %r" % finish_reason)
    if finish_reason == "length":
        checks.check(usage.completion_tokens == args.max_tokens,
                     "finish_reason length after %d of %d tokens" % (usage.completion_tokens, args.max_tokens))

    streamed = stream(client, model, messages, args.max_tokens)
    print("streaming: %r in %d deltas, finish_reason=%s" % (streamed["answer"], streamed["pieces"], streamed["finish_reason"]))
    checks.check(streamed["answer"] == answer,
                 "the streamed answer %r differs from the non-streaming one %r" % (streamed["answer"], answer))
    checks.check(streamed["finish_reason"] == finish_reason,
                 "streamed finish_reason %r, non-streaming %r" % (streamed["finish_reason"], finish_reason))
    checks.check(streamed["usage"] is not None, "no usage chunk arrived with stream_options.include_usage")
    checks.check(streamed["usage"].completion_tokens == usage.completion_tokens,
                 "streamed usage.completion_tokens %d, non-streaming %d" % (
                     streamed["usage"].completion_tokens, usage.completion_tokens))
    if usage.completion_tokens > 1:
        checks.check(streamed["pieces"] > 1, "%d tokens came in one delta: not streamed" % usage.completion_tokens)

    if args.expect_text:
        with open(args.expect_text, encoding="utf-8") as f:
            expected = f.read()
        expected = expected[:-1] if expected.endswith("\n") else expected
        checks.check(answer == expected, "the answer %r is not --expect-text's %r" % (answer, expected))
        print("expect-text: the answer equals %s" % args.expect_text)

    text_prompt = "A big red square. What size is the shape?"
    text_answer, text_finish, text_usage, _ = complete(client, model, [user_message(text_prompt)], args.max_tokens)
    print("text only: %r -> %r (%d tokens, %s)" % (text_prompt, text_answer, text_usage.completion_tokens, text_finish))
    checks.check(text_answer and text_usage.completion_tokens > 0, "the text-only request gave no answer")

    def still_works(after):
        again, _, _, _ = complete(client, model, messages, args.max_tokens)
        checks.check(again == answer, "after %s the same request answered %r, not %r" % (after, again, answer))

    print("errors:")
    expect_error(checks, "unknown model", openai.NotFoundError, lambda: complete(
        client, "no-such-model", messages, args.max_tokens))
    still_works("an unknown model")
    expect_error(checks, "max_tokens=-5", openai.BadRequestError, lambda: complete(client, model, messages, -5))
    still_works("max_tokens=-5")
    remote = [user_message(args.prompt, "https://example.com/x.jpg")]
    expect_error(checks, "https image_url", openai.BadRequestError, lambda: complete(
        client, model, remote, args.max_tokens))
    still_works("an https image_url")
    return checks


def percentile(values, fraction):
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(fraction * len(ordered)))) - 1]


def run_load(args, client, summary):
    """Fills `summary`; fails after the scaling measurement, so that a failed run still reports it."""
    checks = Checks()
    model = client.models.list().data[0].id
    if args.scaling_only:
        summary["scaling"] = measure_scaling(args, client, model, checks)
        return checks
    image_uri = image_data_uri(args.image)
    requests = [(prompt, [user_message(prompt, image_uri if with_image else None)]) for prompt, with_image in LOAD_PROMPTS]

    # The answer each request gets alone is the reference: batching must not change a greedy answer.
    print("reference answers (one request at a time, temperature 0):")
    references = []
    for prompt, messages in requests:
        answer, _, _, _ = complete(client, model, messages, args.max_tokens)
        references.append(answer)
        print("  %-45r -> %r" % (prompt, answer))

    # Every distinct request both streamed and not, shuffled so that the batches mix them.
    jobs = [(i % len(requests), (i // len(requests)) % 2 == 0) for i in range(args.requests)]
    random.Random(args.seed).shuffle(jobs)
    lock = threading.Lock()
    failures = []

    def one(job):
        index, streaming = job
        start = time.monotonic()
        try:
            if streaming:
                result = stream(client, model, requests[index][1], args.max_tokens)
                answer, tokens = result["answer"], result["usage"].completion_tokens if result["usage"] else 0
                first = result["first"] - start if result["first"] else None
            else:
                answer, _, usage, _ = complete(client, model, requests[index][1], args.max_tokens)
                tokens, first = usage.completion_tokens, None
        except Exception as error:  # every failure is counted, not only the openai ones
            with lock:
                failures.append("request %d (%r, stream=%s): %s: %s" % (
                    index, requests[index][0], streaming, type(error).__name__, error))
            return None
        return {"index": index, "streaming": streaming, "answer": answer, "tokens": tokens,
                "latency": time.monotonic() - start, "first_token": first}

    print("load: %d requests, %d at a time" % (args.requests, args.concurrency))
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        results = [r for r in pool.map(one, jobs) if r is not None]
    wall = time.monotonic() - start

    mismatches = [r for r in results if r["answer"] != references[r["index"]]]
    for r in mismatches[:5]:
        print("  MISMATCH %r (stream=%s): %r, alone %r" % (
            requests[r["index"]][0], r["streaming"], r["answer"], references[r["index"]]))
    for failure in failures[:5]:
        print("  ERROR " + failure)
    latencies = [r["latency"] for r in results]
    first_tokens = [r["first_token"] for r in results if r["first_token"] is not None]
    tokens = sum(r["tokens"] for r in results)
    summary.update({
        "requests": args.requests, "concurrency": args.concurrency, "completed": len(results),
        "errors": len(failures), "mismatches": len(mismatches), "wall_s": round(wall, 3),
        "latency_p50_s": round(percentile(latencies, 0.5), 3) if latencies else None,
        "latency_p99_s": round(percentile(latencies, 0.99), 3) if latencies else None,
        "first_token_p50_s": round(percentile(first_tokens, 0.5), 3) if first_tokens else None,
        "completion_tokens": tokens, "completion_tokens_per_s": round(tokens / wall, 2),
    })
    print("  %d completed in %.1f s, %d errors, %d mismatches; latency p50 %s s, p99 %s s; "
          "first token p50 %s s (streams); %d completion tokens, %.1f tokens/s" % (
              len(results), wall, len(failures), len(mismatches), summary["latency_p50_s"],
              summary["latency_p99_s"], summary["first_token_p50_s"], tokens, summary["completion_tokens_per_s"]))

    summary["scaling"] = measure_scaling(args, client, model, checks)
    checks.check(not failures, "%d of %d requests failed (first: %s)" % (
        len(failures), args.requests, failures[0] if failures else ""))
    checks.check(not mismatches, "%d answers under load differ from the same request alone" % len(mismatches))
    checks.passed += len(results)  # one check per answer compared with its request's answer alone
    return checks


def measure_scaling(args, client, model, checks):
    """Aggregate decode tokens/s with N long streams at once, N = 1 and 4."""
    messages = [user_message(LONG_PROMPT)]
    print("scaling: streams of up to %d tokens (%r)" % (args.scale_tokens, LONG_PROMPT))
    rates, steady_rates = {}, {}
    for n in (1, 4):
        with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
            results = list(pool.map(lambda _: stream(client, model, messages, args.scale_tokens, args.scale_temperature),
                                    range(n)))
        for r in results:
            checks.check(r["pieces"] > 0 and r["finish_reason"] in ("stop", "length"),
                         "a scaling stream ended with %d deltas and finish_reason %r" % (r["pieces"], r["finish_reason"]))
        # Overall: deltas after each stream's first, from the earliest first delta to the latest last
        # one (another stream's prefill in between counts against it).
        decoded = sum(r["pieces"] - 1 for r in results)
        window = max(r["last"] for r in results) - min(r["first"] for r in results)
        rates[n] = decoded / window if window > 0 else 0.0
        # Steady: deltas while every stream is decoding, from the latest first delta to the earliest last one.
        steady_start, steady_end = max(r["first"] for r in results), min(r["last"] for r in results)
        steady = sum(1 for r in results for t in r["times"] if steady_start < t <= steady_end)
        steady_rates[n] = steady / (steady_end - steady_start) if steady_end > steady_start and steady else 0.0
        begun = min(r["start"] for r in results)
        lengths = [r["usage"].completion_tokens if r["usage"] else r["pieces"] for r in results]
        print("  %d stream(s): %s tokens each, first tokens after %s s; %d decoded in %.3f s: %.1f tokens/s; "
              "all decoding: %d in %.3f s: %.1f tokens/s" % (
                  n, lengths, [round(r["first"] - begun, 3) for r in results], decoded, window, rates[n],
                  steady, max(0.0, steady_end - steady_start), steady_rates[n]))
        if sum(lengths) < len(lengths) * args.scale_tokens / 2:
            print("  (the model stopped early: too few tokens for a meaningful rate; --scaling-only against a "
                  "model that writes long answers measures it)")
    ratio = rates[4] / rates[1] if rates[1] else 0.0
    steady_ratio = steady_rates[4] / steady_rates[1] if steady_rates[1] else 0.0
    print("  4 streams vs 1: %.2fx overall, %.2fx while all decode (goal >= 3x)" % (ratio, steady_ratio))
    return {"decode_tokens_per_s_1": round(rates[1], 2), "decode_tokens_per_s_4": round(rates[4], 2),
            "ratio_4_vs_1": round(ratio, 2), "steady_tokens_per_s_4": round(steady_rates[4], 2),
            "steady_ratio_4_vs_1": round(steady_ratio, 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", required=True, help="the server's OpenAI base URL, e.g. http://127.0.0.1:18080/v1")
    parser.add_argument("--image", help="a .jpg, .png or .webp sent as a data: URI (required but with --scaling-only)")
    parser.add_argument("--prompt", default="What color is the shape?", help="the question asked about the image")
    parser.add_argument("--expect-text", help="a file the greedy answer must equal (one trailing newline ignored)")
    parser.add_argument("--api-key", help="sent as Authorization: Bearer KEY (default: none)")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of every request (default 32)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds a request may take (default 300)")
    parser.add_argument("--load", action="store_true", help="the load test instead of the API checks")
    parser.add_argument("--requests", type=int, default=200, help="--load: how many requests (default 200)")
    parser.add_argument("--concurrency", type=int, default=8, help="--load: requests in flight at once (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="--load: shuffles the order of the requests")
    parser.add_argument("--scaling-only", action="store_true",
                        help="--load: only the 1-vs-4 streams measurement (text only: any model)")
    parser.add_argument("--scale-tokens", type=int, default=64, help="--load: max_tokens of each scaling stream")
    parser.add_argument("--scale-temperature", type=float, default=0.0,
                        help="--load: temperature of the scaling streams (default 0)")
    args = parser.parse_args()
    if args.scaling_only:
        args.load = True
    elif not args.image:
        parser.error("--image is required (but with --scaling-only)")

    # No retries: a request that fails must show as failed, not be quietly sent again.
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key or "unused",
                           max_retries=0, timeout=args.timeout)
    summary = {"mode": "load" if args.load else "api"}
    try:
        checks = run_load(args, client, summary) if args.load else run_checks(args, client)
    except CheckFailed as failure:
        print("serve_check: FAILED: %s" % failure, file=sys.stderr)
        summary["failed"] = str(failure)
        print(json.dumps(summary, ensure_ascii=False))
        sys.exit(1)
    except openai.APIConnectionError as error:
        sys.exit("serve_check: FAILED: cannot reach %s: %s" % (args.base_url, error))
    except openai.AuthenticationError as error:
        sys.exit("serve_check: FAILED: the server refused the API key (give the one it was started with, --api-key): %s"
                 % error)
    except openai.APIError as error:
        sys.exit("serve_check: FAILED: unexpected %s: %s" % (type(error).__name__, error))
    summary["checks"] = checks.passed
    print("serve_check: all %d checks passed" % checks.passed)
    print(json.dumps(summary, ensure_ascii=False))


if __name__ == "__main__":
    main()
