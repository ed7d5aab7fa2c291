#!/usr/bin/env python3
"""Checks `pivot serve`'s chat page in a real headless Chromium, over the Chrome DevTools Protocol.

    .build/release/pivot serve --model Checkpoints/demo-2-instruct/final --port 18080 &
    Tools/serve_browser_check.py --url http://127.0.0.1:18080/ --image shape.jpg \\
        --prompt "What color is the shape?" --expect-text chat.txt --screenshot /tmp/chat.png

It opens the page, waits for the model's name in the header, fills the API key if one is given,
chooses the image with DOM.setFileInputFiles, types the prompt, clicks Send, and watches the
answer's bubble: its text must grow in more than one step (streamed) and it must end with
data-done="true" (within --timeout seconds). Then it compares the answer with --expect-text and
saves a screenshot.

A small model writes a short answer in a few milliseconds, so its events reach the page in one
read and the bubble could not be seen growing. So by default the page is opened through a proxy
on 127.0.0.1 that passes every request and response on unchanged, except that it sends each
server-sent event on its own, --pace seconds after the one before. --pace 0 opens the server
directly (a model slow enough to be seen streaming). Needs Debian's chromium (installed with apt-get when missing and run as root)
and websocket-client (Tools/assets/requirements-serve.txt).
"""
import argparse
import base64
import http.client
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

VENV = os.path.expanduser("~/.venvs/pivot-ref")
try:
    import websocket
except ImportError:
    # Run as `Tools/serve_browser_check.py`, the system Python lacks websocket-client: the project's venv has it.
    if os.path.exists(os.path.join(VENV, "bin", "python")) and os.path.realpath(sys.prefix) != os.path.realpath(VENV):
        os.execv(os.path.join(VENV, "bin", "python"), [os.path.join(VENV, "bin", "python")] + sys.argv)
    sys.exit("serve_browser_check: websocket-client is missing: pip install -r Tools/assets/requirements-serve.txt")

# Records every change of the last answer's length (time, answers so far, length) inside the page: polling over
# the protocol could miss steps that come a few milliseconds apart.
GROWTH_OBSERVER = """
window.__pivotGrowth = [];
new MutationObserver(() => {
  const bubbles = document.querySelectorAll('.msg.assistant');
  const last = bubbles[bubbles.length - 1];
  if (!last) return;
  const length = last.querySelector('.text').textContent.length;
  const growth = window.__pivotGrowth, previous = growth[growth.length - 1];
  if (!previous || previous[1] !== bubbles.length || previous[2] !== length) growth.push([performance.now(), bubbles.length, length]);
}).observe(document.getElementById('messages'), {childList: true, subtree: true, characterData: true});
"""

LAST_ANSWER = """(() => {
  const bubbles = document.querySelectorAll('.msg.assistant');
  const last = bubbles[bubbles.length - 1];
  if (!last) return {count: 0};
  const error = last.querySelector('.error-text');
  return {count: bubbles.length, done: last.dataset.done || null, text: last.querySelector('.text').textContent,
          error: error ? error.textContent : null, sendDisabled: document.getElementById('send').disabled};
})()"""


class CheckFailed(Exception):
    pass


def ensure_chromium():
    """Debian's chromium (and a CJK font, so the screenshot shows the Chinese labels)."""
    packages = []
    if not shutil.which("chromium"):
        packages.append("chromium")
    fonts = subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True) if shutil.which("fc-list") else None
    if fonts is not None and not fonts.stdout.strip():
        packages.append("fonts-noto-cjk")
    if not packages:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        if "chromium" in packages:
            sys.exit("serve_browser_check: chromium is missing: apt-get install -y chromium")
        print("serve_browser_check: no Chinese font; the screenshot will show boxes (apt-get install fonts-noto-cjk)")
        return
    print("serve_browser_check: apt-get install -y %s" % " ".join(packages))
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq"] + packages, check=True, stdout=subprocess.DEVNULL)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DevTools:
    """One page's protocol connection: commands by id; events kept for the exceptions they report."""

    def __init__(self, ws_url):
        # No Origin header: Chromium refuses protocol connections from unlisted origins.
        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.exceptions = []

    def send(self, method, timeout=30, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            message = json.loads(self.ws.recv())
            if message.get("method") == "Runtime.exceptionThrown":
                details = message["params"]["exceptionDetails"]
                self.exceptions.append(details.get("exception", {}).get("description") or details.get("text"))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise CheckFailed("%s: %s" % (method, message["error"].get("message")))
                return message.get("result", {})

    def evaluate(self, expression):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise CheckFailed("page script failed: %s" % result["exceptionDetails"].get("text"))
        return result["result"].get("value")

    def wait_for(self, expression, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.05)
        raise CheckFailed("timed out after %g s waiting for %s" % (timeout, what))


def start_pacing_proxy(server_url, pause):
    """A proxy on 127.0.0.1 to `server_url` that sends each server-sent event `pause` seconds apart."""
    upstream = urllib.parse.urlsplit(server_url)
    skipped = ("host", "connection", "content-length", "transfer-encoding", "keep-alive", "date", "server")

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_):
            pass

        def do_GET(self):
            self.forward()

        def do_POST(self):
            self.forward()

        def write_chunk(self, data):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def forward(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in skipped}
            connection = http.client.HTTPConnection(upstream.hostname, upstream.port or 80, timeout=300)
            try:
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in skipped:
                        self.send_header(key, value)
                if (response.getheader("Content-Type") or "").startswith("text/event-stream"):
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    event = b""
                    for line in iter(response.readline, b""):
                        event += line
                        if line in (b"\n", b"\r\n"):  # a blank line ends an event
                            self.write_chunk(event)
                            event = b""
                            time.sleep(pause)
                    if event:
                        self.write_chunk(event)
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    data = response.read()
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
            finally:
                connection.close()

    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    proxy.daemon_threads = True
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    return proxy


def launch_chromium(port, profile, log):
    command = ["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=%d" % port,
               "--user-data-dir=%s" % profile, "--window-size=1100,760", "--no-first-run", "about:blank"]
    process = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CheckFailed("chromium exited with status %d (log: %s)" % (process.returncode, log.name))
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/json" % port, timeout=2) as response:
                pages = [t for t in json.load(response) if t.get("type") == "page"]
            if pages:
                return process, pages[0]["webSocketDebuggerUrl"]
        except OSError:
            pass
        time.sleep(0.2)
    raise CheckFailed("chromium's DevTools port %d did not answer in 30 s" % port)


def send_turn(page, prompt, timeout):
    """Types a prompt, clicks Send and waits for the new answer; returns (answer state, growth steps)."""
    before = page.evaluate(LAST_ANSWER)["count"]
    page.evaluate("window.__pivotGrowth = []")
    page.evaluate("(() => { const p = document.getElementById('prompt'); p.value = %s;"
                  " p.dispatchEvent(new Event('input', {bubbles: true})); })()" % json.dumps(prompt))
    page.evaluate("document.getElementById('send').click()")
    samples = []  # (seconds since the click, text length), polled as a second view of the streaming
    start = time.monotonic()
    while True:
        state = page.evaluate(LAST_ANSWER)
        if state["count"] > before:
            if not samples or samples[-1][1] != len(state["text"]):
                samples.append((round(time.monotonic() - start, 3), len(state["text"])))
            if state["done"]:
                break
        if time.monotonic() - start > timeout:
            raise CheckFailed("no data-done on the answer after %g s (text so far: %r)" % (timeout, state.get("text")))
        time.sleep(0.02)
    # Only this turn's bubble: the observer also sees the previous answer while the question is added.
    growth = [[time_ms, length] for time_ms, count, length in page.evaluate("window.__pivotGrowth") if count == state["count"]]
    return state, growth, samples


def run(args):
    image = os.path.abspath(args.image)
    if not os.path.isfile(image):
        raise CheckFailed("no image at %s" % image)
    ensure_chromium()
    profile = tempfile.mkdtemp(prefix="pivot-chromium-")
    log = open(os.path.join(profile, "chromium.log"), "w")
    process = proxy = None
    url = args.url
    try:
        if args.pace > 0:
            proxy = start_pacing_proxy(args.url, args.pace)
            target = urllib.parse.urlsplit(args.url)
            url = target._replace(netloc="127.0.0.1:%d" % proxy.server_address[1]).geturl()
            print("pacing: the page opens %s, a proxy that sends the server's events %g s apart" % (url, args.pace))
        process, ws_url = launch_chromium(args.debug_port or free_port(), profile, log)
        page = DevTools(ws_url)
        page.send("Page.enable")
        page.send("Runtime.enable")
        page.send("Page.navigate", url=url)
        page.wait_for("document.readyState === 'complete' && !!document.getElementById('messages')", 30, "the page")
        print("page: %s (%s)" % (url, page.evaluate("document.title")))

        model_state = ("(() => { const m = document.getElementById('model');"
                       " return m.dataset.ready ? 'READY ' + m.textContent :"
                       " (m.classList.contains('error') ? 'ERROR ' + m.textContent : ''); })()")
        model = page.wait_for(model_state, 30, "the model's name in the header")
        if args.api_key:
            # A server with a key refuses the page's first GET /v1/models; 'change' makes it ask again with the key.
            page.evaluate("(() => { const k = document.getElementById('api-key'); k.value = %s;"
                          " k.dispatchEvent(new Event('input')); k.dispatchEvent(new Event('change')); })()"
                          % json.dumps(args.api_key))
            # Done when the name shows, or when a new error replaces the one before the key.
            before = json.dumps(model)
            try:
                model = page.wait_for("(() => { const s = %s; return (s.startsWith('READY ') || s !== %s) && s; })()"
                                      % (model_state, before), 30, "the model's name after the API key")
            except CheckFailed:
                model = page.evaluate(model_state)
        if not model.startswith("READY "):
            raise CheckFailed("the page could not list the models: %s" % model[6:])
        model = model[6:]
        print("model shown: %s" % model)

        root = page.send("DOM.getDocument")["root"]["nodeId"]
        node = page.send("DOM.querySelector", nodeId=root, selector="#image-input")["nodeId"]
        if not node:
            raise CheckFailed("no #image-input on the page")
        page.send("DOM.setFileInputFiles", files=[image], nodeId=node)
        page.wait_for("(() => { const p = document.getElementById('image-preview');"
                      " return !p.hidden && p.src.startsWith('data:image/'); })()", 10, "the image preview")
        print("image chosen: %s (preview shown)" % image)

        page.evaluate(GROWTH_OBSERVER)
        failures = []
        turns = [args.prompt] + ([args.follow_up] if args.follow_up else [])
        for number, prompt in enumerate(turns, 1):
            state, growth, samples = send_turn(page, prompt, args.timeout)
            text = state["text"]
            lengths = [length for _, length in growth if length > 0]
            print("turn %d: %r -> %r (data-done=%s)" % (number, prompt, text, state["done"]))
            print("  text length as it changed (ms after page load, chars): %s" % [[round(t), n] for t, n in growth])
            print("  polled (s after click, chars): %s" % samples)
            if state["done"] != "true":
                failures.append("turn %d ended with data-done=%s: %s" % (number, state["done"], state["error"]))
                break
            if not text.strip():
                failures.append("turn %d: the answer is empty" % number)
            if len(text) > 1 and len(lengths) < 2:
                failures.append("turn %d: the answer appeared in one step, not streamed (%s)" % (number, growth))
            if state["sendDisabled"]:
                failures.append("turn %d: #send is still disabled after the answer" % number)
            if number == 1:
                has_thumbnail = page.evaluate("!!document.querySelector('.msg.user img[src^=\"data:image/\"]')")
                if not has_thumbnail:
                    failures.append("the first user message shows no image thumbnail")
                if args.expect_text:
                    with open(args.expect_text, encoding="utf-8") as f:
                        expected = f.read().strip()
                    if text.strip() != expected:
                        failures.append("the answer %r is not --expect-text's %r" % (text.strip(), expected))
                    else:
                        print("  equals %s" % args.expect_text)

        if args.screenshot:
            shot = page.send("Page.captureScreenshot", format="png")
            with open(args.screenshot, "wb") as f:
                f.write(base64.b64decode(shot["data"]))
            print("screenshot: %s" % args.screenshot)
        page.evaluate("1")  # collects exceptions reported since the last command
        if page.exceptions:
            failures.append("the page threw: %s" % "; ".join(page.exceptions))
        if failures:
            raise CheckFailed("\n  ".join(failures))
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if proxy is not None:
            proxy.shutdown()
        log.close()
        shutil.rmtree(profile, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="the chat page, e.g. http://127.0.0.1:18080/")
    parser.add_argument("--image", required=True, help="a .jpg, .png or .webp chosen in the page's image input")
    parser.add_argument("--prompt", default="What color is the shape?", help="the question typed into the page")
    parser.add_argument("--follow-up", help="a second question in the same conversation (optional)")
    parser.add_argument("--expect-text", help="a file the first answer must equal (whitespace trimmed)")
    parser.add_argument("--screenshot", help="where to save a PNG of the page at the end")
    parser.add_argument("--api-key", help="typed into the page's API key field")
    parser.add_argument("--timeout", type=float, default=120, help="seconds an answer may take (default 120)")
    parser.add_argument("--pace", type=float, default=0.04,
                        help="seconds between server-sent events on their way to the page, through a local proxy "
                             "(0: the page talks to the server directly; default 0.04)")
    parser.add_argument("--debug-port", type=int, default=0, help="Chromium's DevTools port (default: a free one)")
    args = parser.parse_args()
    try:
        run(args)
    except CheckFailed as failure:
        sys.exit("serve_browser_check: FAILED: %s" % failure)
    except (OSError, websocket.WebSocketException) as error:
        sys.exit("serve_browser_check: FAILED: %s: %s" % (type(error).__name__, error))
    print("serve_browser_check: passed")


if __name__ == "__main__":
    main()
