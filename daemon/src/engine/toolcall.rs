//! Tool calls in a model's own output format, turned into OpenAI-style calls.
//!
//! A tool-capable chat template teaches the model one way of writing a call; this module
//! reads the three our models use:
//!
//! * **DeepSeek** (R1 / V3): `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME`
//!   `\n```json\n{…}\n```<｜tool▁call▁end｜>` (more calls separated by newlines)
//!   `<｜tool▁calls▁end｜>`; the V3.1 form `<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{…}` is read too.
//! * **Hermes** (Qwen2.5, Hermes 2/3): one `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`
//!   block per call. Qwen2.5-Coder, though taught this by its template, mostly writes the call
//!   object without the tags: bare, or in a ```` ```json ```` fence. That is read as a call
//!   too, but only when it is the whole answer (nothing before or after it) and names one of
//!   the request's tools, so JSON inside an ordinary answer stays content. The Qwen2.5-Coder
//!   template also shows the object with doubled braces (`{{"name": …}}`, a literal `{{` in a
//!   Jinja string), which the model copies: one doubled outer pair is accepted.
//! * **Llama 3.x JSON**: `{"name": …, "parameters": {…}}` as the whole answer, optionally after
//!   `<|python_tag|>`, several separated by `;`.
//!
//! The format is picked from the chat template's text ([`ToolFormat::detect`]): a template
//! that renders DeepSeek's call tokens, `<tool_call>` or Llama's `<|python_tag|>` makes its
//! model write that form.
//!
//! [`ToolCallParser`] is incremental: it is fed the detokenized pieces of the answer as they
//! come and returns what can be told already. Text before a call is content at once; from a
//! call's opening marker on, text is held back until the call is complete, then the call is
//! returned (name first, then its arguments in the pieces the model wrote them). A call is
//! only returned once whole and valid — terminated, its arguments a JSON object, its name one
//! of the request's tools — so that malformed output can still go back to the client as the
//! plain content it is. The whole-text parse ([`parse`]) is the same parser fed one piece, so
//! a streamed answer reassembles to exactly the non-streamed one.

use serde::Deserialize;
use serde_json::value::RawValue;

pub mod grammar;

const DS_CALLS_BEGIN: &str = "<｜tool▁calls▁begin｜>";
const DS_CALLS_END: &str = "<｜tool▁calls▁end｜>";
const DS_CALL_BEGIN: &str = "<｜tool▁call▁begin｜>";
const DS_CALL_END: &str = "<｜tool▁call▁end｜>";
const DS_SEP: &str = "<｜tool▁sep｜>";
const HERMES_BEGIN: &str = "<tool_call>";
const HERMES_END: &str = "</tool_call>";
const PYTHON_TAG: &str = "<|python_tag|>";
const JSON_FENCE: &str = "```json";
const FENCE_END: &str = "```";

/// How a model writes a tool call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolFormat {
    /// DeepSeek-R1 / V3 call tokens.
    DeepSeek,
    /// `<tool_call>{json}</tool_call>` (Qwen2.5, Hermes).
    Hermes,
    /// Bare `{"name", "parameters"}` JSON, optionally after `<|python_tag|>` (Llama 3.x).
    LlamaJson,
}

impl ToolFormat {
    /// The format a chat template teaches, from the markers it renders; `None` when it
    /// renders none of them.
    pub fn detect(template: &str) -> Option<ToolFormat> {
        if template.contains(DS_CALL_BEGIN) || template.contains(DS_CALLS_BEGIN) {
            Some(ToolFormat::DeepSeek)
        } else if template.contains(HERMES_BEGIN) {
            Some(ToolFormat::Hermes)
        } else if template.contains(PYTHON_TAG) || template.contains("ipython") {
            Some(ToolFormat::LlamaJson)
        } else {
            None
        }
    }

    /// Markers that open a call in this format.
    fn markers(self) -> &'static [&'static str] {
        match self {
            ToolFormat::DeepSeek => &[DS_CALLS_BEGIN, DS_CALL_BEGIN],
            ToolFormat::Hermes => &[HERMES_BEGIN],
            ToolFormat::LlamaJson => &[PYTHON_TAG],
        }
    }
}

/// One parsed call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments as JSON text (an object), as the model wrote it.
    pub arguments: String,
}

/// What the parser can tell about the answer so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Plain answer text.
    Content(String),
    /// Call `index` (0, 1, … within this answer) of function `name` begins.
    CallStart { index: usize, name: String },
    /// More of the arguments of call `index`.
    Arguments { index: usize, text: String },
}

/// A whole answer split into content and calls.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub content: String,
    pub calls: Vec<ToolCall>,
}

/// Parse a whole answer: the streaming parser fed it as one piece.
pub fn parse(format: ToolFormat, names: &[String], text: &str) -> Parsed {
    let mut p = ToolCallParser::new(format, names.to_vec());
    let mut pieces = p.push(text);
    pieces.extend(p.finish());
    collect(pieces)
}

/// Content and calls of a piece sequence (what an SDK reassembles from a stream).
pub fn collect(pieces: impl IntoIterator<Item = Piece>) -> Parsed {
    let mut out = Parsed::default();
    for piece in pieces {
        match piece {
            Piece::Content(t) => out.content.push_str(&t),
            Piece::CallStart { name, .. } => out.calls.push(ToolCall {
                name,
                arguments: String::new(),
            }),
            Piece::Arguments { index, text } => {
                if let Some(c) = out.calls.get_mut(index) {
                    c.arguments.push_str(&text);
                }
            }
        }
    }
    out
}

/// Result of looking at a call region.
enum Region {
    /// The region is not complete yet.
    NeedMore,
    /// The region ends at this byte of the buffer (what follows is text again).
    End(usize),
}

/// Incremental tool-call parser for one answer.
pub struct ToolCallParser {
    format: ToolFormat,
    names: Vec<String>,
    /// Text not yet returned: plain text held back (a possible marker, trailing whitespace),
    /// or the call region being read.
    buf: String,
    /// Byte offsets in `buf` where pushed pieces ended: arguments are returned in the pieces
    /// the model wrote them.
    cuts: Vec<usize>,
    /// `buf` starts a call region (leading whitespace, then a marker or, for Llama, `{`).
    in_region: bool,
    /// Bytes of the current region already returned as calls.
    pos: usize,
    /// Calls returned in the current region.
    region_calls: usize,
    /// Calls returned in the whole answer.
    calls: usize,
    /// The last thing returned was a call: whitespace (and, for Llama, `;`) after it is
    /// dropped, and for Llama a `{` opens the next call.
    after_call: bool,
    /// Some content has been returned.
    any_content: bool,
    /// Bytes of the region already searched for its end (so each piece is looked at once,
    /// not the whole region again: a model that never closes a call costs linear time).
    scanned: usize,
    /// Llama, and Hermes without tags: the bracket matching of the JSON object so far.
    json: JsonScan,
    /// Hermes: the current region is a tagless call object (see [`Self::hermes_bare`]).
    bare: bool,
}

/// Incremental bracket matching of a JSON object (strings and escapes respected).
#[derive(Default)]
struct JsonScan {
    /// Where in the buffer the object starts.
    start: usize,
    /// Bytes of the object scanned so far.
    pos: usize,
    depth: usize,
    in_str: bool,
    escaped: bool,
    /// The object's length, once closed (asked again, it is not scanned again).
    closed: Option<usize>,
}

impl JsonScan {
    /// Length of the object at the start of `s`, once closed; scans only what is new.
    fn advance(&mut self, s: &str) -> Option<usize> {
        if self.closed.is_some() {
            return self.closed;
        }
        for (i, c) in s[self.pos..].char_indices() {
            let i = self.pos + i;
            if self.in_str {
                match c {
                    _ if self.escaped => self.escaped = false,
                    '\\' => self.escaped = true,
                    '"' => self.in_str = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => self.in_str = true,
                '{' | '[' => self.depth += 1,
                '}' | ']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        self.closed = Some(i + 1);
                        return self.closed;
                    }
                }
                _ => {}
            }
        }
        self.pos = s.len();
        None
    }
}

impl ToolCallParser {
    /// A parser for `format` that accepts calls of the functions in `names`.
    pub fn new(format: ToolFormat, names: Vec<String>) -> Self {
        ToolCallParser {
            format,
            names,
            buf: String::new(),
            cuts: Vec::new(),
            in_region: false,
            pos: 0,
            region_calls: 0,
            calls: 0,
            after_call: false,
            any_content: false,
            scanned: 0,
            json: JsonScan::default(),
            bare: false,
        }
    }

    /// Calls returned so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Feed the next piece of the answer.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        let mut out = Vec::new();
        if !text.is_empty() {
            self.buf.push_str(text);
            self.cuts.push(self.buf.len());
            self.step(&mut out, false);
        }
        out
    }

    /// The answer is over: what is still held back is returned (an incomplete call as the
    /// content it is).
    pub fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        self.step(&mut out, true);
        out
    }

    fn step(&mut self, out: &mut Vec<Piece>, eof: bool) {
        loop {
            if self.in_region {
                let r = match self.format {
                    ToolFormat::DeepSeek => self.deepseek(out, eof),
                    ToolFormat::Hermes if self.bare => self.hermes_bare(out, eof),
                    ToolFormat::Hermes => self.hermes(out, eof),
                    ToolFormat::LlamaJson => self.llama(out, eof),
                };
                match r {
                    Region::NeedMore => return,
                    Region::End(end) => {
                        self.consume(end);
                        self.in_region = false;
                        self.after_call = self.region_calls > 0;
                        self.region_calls = 0;
                        self.pos = 0;
                        self.scanned = 0;
                        self.json = JsonScan::default();
                        self.bare = false;
                    }
                }
            } else if !self.text(out, eof) {
                return;
            }
        }
    }

    /// Plain text: return what cannot begin a call; true when a call region begins.
    fn text(&mut self, out: &mut Vec<Piece>, eof: bool) -> bool {
        if self.after_call {
            // Whitespace (and Llama's `;` separator) after a call is not content.
            let skip: &[char] = if self.format == ToolFormat::LlamaJson {
                &[' ', '\t', '\n', '\r', ';']
            } else {
                &[' ', '\t', '\n', '\r']
            };
            let rest = self.buf.trim_start_matches(skip);
            if rest.is_empty() || (!eof && is_strict_prefix(rest, self.format.markers())) {
                if eof {
                    self.consume(self.buf.len());
                }
                return false;
            }
            if self.format == ToolFormat::LlamaJson && (rest.starts_with('{')) {
                self.after_call = false;
                self.in_region = true;
                return true;
            }
            let n = self.buf.len() - self.buf.trim_start().len();
            self.consume(n);
            self.after_call = false;
        }
        if self.format == ToolFormat::LlamaJson && !self.any_content && self.calls == 0 {
            // Llama answers with the bare JSON call: a `{` first opens one.
            let rest = self.buf.trim_start();
            if rest.is_empty() {
                if eof {
                    self.emit_content(out, self.buf.len());
                }
                return false;
            }
            if rest.starts_with('{') {
                self.in_region = true;
                return true;
            }
        }
        if self.format == ToolFormat::Hermes && !self.any_content && self.calls == 0 {
            // A tagless call object can only be the whole answer: a `{` or ```` ```json ````
            // first opens one (a strict prefix of the fence is held until it is told).
            let rest = self.buf.trim_start();
            if rest.starts_with('{') || rest.starts_with(JSON_FENCE) {
                self.in_region = true;
                self.bare = true;
                return true;
            }
            if !eof && (rest.is_empty() || is_strict_prefix(rest, &[JSON_FENCE])) {
                return false;
            }
        }
        let markers = self.format.markers();
        if let Some(at) = markers.iter().filter_map(|m| self.buf.find(m)).min() {
            // Whitespace before the marker belongs to the region: dropped if a call
            // follows, content again if not.
            let start = self.buf[..at].trim_end().len();
            self.emit_content(out, start);
            self.in_region = true;
            return true;
        }
        let end = if eof {
            self.buf.len()
        } else {
            let hold = held_suffix(&self.buf, markers);
            self.buf[..hold].trim_end().len()
        };
        self.emit_content(out, end);
        false
    }

    fn emit_content(&mut self, out: &mut Vec<Piece>, end: usize) {
        if end == 0 {
            return;
        }
        let text = self.buf[..end].to_string();
        self.consume(end);
        self.any_content |= !text.trim().is_empty();
        push_content(out, text);
    }

    /// Drop the first `n` bytes of the buffer.
    fn consume(&mut self, n: usize) {
        self.buf.drain(..n);
        self.cuts.retain(|&c| c > n);
        for c in &mut self.cuts {
            *c -= n;
        }
    }

    /// Return a validated call whose arguments sit at `args` (byte range in `buf`), or
    /// whose arguments had to be decoded (`decoded`).
    fn emit_call(
        &mut self,
        out: &mut Vec<Piece>,
        name: String,
        args: std::ops::Range<usize>,
        decoded: Option<String>,
    ) {
        let index = self.calls;
        self.calls += 1;
        self.region_calls += 1;
        out.push(Piece::CallStart { index, name });
        if let Some(text) = decoded {
            out.push(Piece::Arguments { index, text });
            return;
        }
        let mut from = args.start;
        for &c in self
            .cuts
            .iter()
            .filter(|&&c| c > args.start && c < args.end)
        {
            out.push(Piece::Arguments {
                index,
                text: self.buf[from..c].to_string(),
            });
            from = c;
        }
        out.push(Piece::Arguments {
            index,
            text: self.buf[from..args.end].to_string(),
        });
    }

    /// A region that did not hold a valid call: its text up to `end` is content.
    fn fail(&mut self, out: &mut Vec<Piece>, end: usize) -> Region {
        let text = self.buf[self.pos..end].to_string();
        self.any_content |= !text.trim().is_empty();
        push_content(out, text);
        Region::End(end)
    }

    /// Position of `pat` at or after `start`, searching only text not searched before.
    fn find_end(&mut self, start: usize, pat: &str) -> Option<usize> {
        let mut from = start.max(self.scanned.saturating_sub(pat.len() - 1));
        while !self.buf.is_char_boundary(from) {
            from -= 1;
        }
        let found = self.buf[from..].find(pat).map(|i| from + i);
        if found.is_none() {
            self.scanned = self.buf.len();
        }
        found
    }

    /// The body of a block starting at `body_start` and closed by `close`: its range and the
    /// byte after the closing marker. Without the marker: `Err(NeedMore)`, or at the end of the
    /// answer the text so far as content.
    fn block(
        &mut self,
        out: &mut Vec<Piece>,
        eof: bool,
        body_start: usize,
        close: &str,
    ) -> Result<(std::ops::Range<usize>, usize), Region> {
        match self.find_end(body_start, close) {
            Some(body_end) => Ok((body_start..body_end, body_end + close.len())),
            None if eof => Err(self.fail(out, self.buf.len())),
            None => Err(Region::NeedMore),
        }
    }

    fn known(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    /// DeepSeek: calls one after another until `<｜tool▁calls▁end｜>` or other text.
    fn deepseek(&mut self, out: &mut Vec<Piece>, eof: bool) -> Region {
        loop {
            let mut at = self.pos + ws_len(&self.buf[self.pos..]);
            if self.region_calls == 0 && self.buf[at..].starts_with(DS_CALLS_BEGIN) {
                at += DS_CALLS_BEGIN.len();
                at += ws_len(&self.buf[at..]);
            }
            let rest = &self.buf[at..];
            if rest.starts_with(DS_CALL_BEGIN) {
                let (body, end) = match self.block(out, eof, at + DS_CALL_BEGIN.len(), DS_CALL_END)
                {
                    Ok(block) => block,
                    Err(region) => return region,
                };
                match deepseek_call(&self.buf, body) {
                    Some((name, args)) if self.known(&name) => {
                        self.emit_call(out, name, args, None);
                        self.pos = end;
                    }
                    _ => return self.fail(out, end),
                }
            } else if rest.starts_with(DS_CALLS_END) {
                if self.region_calls == 0 {
                    return self.fail(out, at + DS_CALLS_END.len());
                }
                return Region::End(at + DS_CALLS_END.len());
            } else if rest.is_empty()
                || (!eof && is_strict_prefix(rest, &[DS_CALL_BEGIN, DS_CALLS_END]))
            {
                if !eof {
                    return Region::NeedMore;
                }
                return if self.region_calls > 0 {
                    Region::End(self.buf.len())
                } else {
                    self.fail(out, self.buf.len())
                };
            } else if self.region_calls > 0 {
                // Text after the calls without the closing marker: text again.
                return Region::End(self.pos);
            } else {
                return self.fail(out, at);
            }
        }
    }

    /// Hermes: one `<tool_call>…</tool_call>` block.
    fn hermes(&mut self, out: &mut Vec<Piece>, eof: bool) -> Region {
        let Some(open) = self.buf.find(HERMES_BEGIN) else {
            return self.fail(out, self.buf.len());
        };
        let (body, end) = match self.block(out, eof, open + HERMES_BEGIN.len(), HERMES_END) {
            Ok(block) => block,
            Err(region) => return region,
        };
        match json_call(&self.buf, body) {
            Some((name, args, decoded)) if self.known(&name) => {
                self.emit_call(out, name, args, decoded);
                Region::End(end)
            }
            _ => self.fail(out, end),
        }
    }

    /// Hermes without tags: the whole answer is one call object, bare or in a ```` ```json ````
    /// fence. Held until the object closes; anything but whitespace after it (or after the
    /// fence) makes the whole region content, so the call is returned at the end of the answer.
    fn hermes_bare(&mut self, out: &mut Vec<Piece>, eof: bool) -> Region {
        let lead = ws_len(&self.buf);
        let fenced = self.buf[lead..].starts_with(JSON_FENCE);
        let at = if fenced {
            let f = lead + JSON_FENCE.len();
            f + ws_len(&self.buf[f..])
        } else {
            lead
        };
        let rest = &self.buf[at..];
        if rest.is_empty() {
            return self.more_or_fail(out, eof);
        }
        if !rest.starts_with('{') {
            return self.fail(out, self.buf.len());
        }
        let end = match self.object_end(out, at, eof) {
            Ok(end) => end,
            Err(region) => return region,
        };
        let mut tail = &self.buf[end..];
        if fenced {
            let t = tail.trim_start();
            if let Some(after) = t.strip_prefix(FENCE_END) {
                tail = after;
            } else if !eof && (t.is_empty() || is_strict_prefix(t, &[FENCE_END])) {
                return Region::NeedMore;
            } else {
                return self.fail(out, self.buf.len());
            }
        }
        if !tail.trim().is_empty() {
            return self.fail(out, self.buf.len());
        }
        if !eof {
            return Region::NeedMore;
        }
        match json_call(&self.buf, at..end) {
            Some((name, args, decoded)) if self.known(&name) => {
                self.emit_call(out, name, args, decoded);
                Region::End(self.buf.len())
            }
            _ => self.fail(out, self.buf.len()),
        }
    }

    /// Where the JSON object at `at` ends, found incrementally (bracket matching carried
    /// over between pieces); else what to return: wait for more, or give it back at the end.
    fn object_end(&mut self, out: &mut Vec<Piece>, at: usize, eof: bool) -> Result<usize, Region> {
        if self.json.start != at {
            self.json = JsonScan {
                start: at,
                ..JsonScan::default()
            };
        }
        match self.json.advance(&self.buf[at..]) {
            Some(len) => Ok(at + len),
            None => Err(self.more_or_fail(out, eof)),
        }
    }

    /// An unfinished region: wait for more text, or at the end give it back as content.
    fn more_or_fail(&mut self, out: &mut Vec<Piece>, eof: bool) -> Region {
        if eof {
            self.fail(out, self.buf.len())
        } else {
            Region::NeedMore
        }
    }

    /// Llama: `[<|python_tag|>] {json}`, the object's end found by bracket matching.
    fn llama(&mut self, out: &mut Vec<Piece>, eof: bool) -> Region {
        let mut at = self.buf.len()
            - self
                .buf
                .trim_start_matches([' ', '\t', '\n', '\r', ';'])
                .len();
        if self.buf[at..].starts_with(PYTHON_TAG) {
            at += PYTHON_TAG.len();
            at += ws_len(&self.buf[at..]);
        }
        let rest = &self.buf[at..];
        if rest.is_empty() || (!eof && is_strict_prefix(rest, &[PYTHON_TAG])) {
            return self.more_or_fail(out, eof);
        }
        if !rest.starts_with('{') {
            return self.fail(out, at);
        }
        let end = match self.object_end(out, at, eof) {
            Ok(end) => end,
            Err(region) => return region,
        };
        match json_call(&self.buf, at..end) {
            Some((name, args, decoded)) if self.known(&name) => {
                self.emit_call(out, name, args, decoded);
                Region::End(end)
            }
            _ => self.fail(out, end),
        }
    }
}

/// Append content, merged with a content piece just before it.
fn push_content(out: &mut Vec<Piece>, text: String) {
    if text.is_empty() {
        return;
    }
    if let Some(Piece::Content(prev)) = out.last_mut() {
        prev.push_str(&text);
    } else {
        out.push(Piece::Content(text));
    }
}

fn ws_len(s: &str) -> usize {
    s.len() - s.trim_start().len()
}

/// `s` is a proper, non-empty prefix of one of `markers`.
fn is_strict_prefix(s: &str, markers: &[&str]) -> bool {
    !s.is_empty()
        && markers
            .iter()
            .any(|m| m.len() > s.len() && m.starts_with(s))
}

/// Where the longest suffix of `buf` that could still become a marker starts (`buf.len()`
/// when none can).
fn held_suffix(buf: &str, markers: &[&str]) -> usize {
    let longest = markers.iter().map(|m| m.len()).max().unwrap_or(0);
    let mut from = buf.len().saturating_sub(longest);
    while !buf.is_char_boundary(from) {
        from -= 1;
    }
    buf[from..]
        .char_indices()
        .map(|(i, _)| from + i)
        .find(|&i| is_strict_prefix(&buf[i..], markers))
        .unwrap_or(buf.len())
}

/// A DeepSeek call body (between the call markers): name and the byte range of the JSON
/// arguments in `buf`.
fn deepseek_call(
    buf: &str,
    body: std::ops::Range<usize>,
) -> Option<(String, std::ops::Range<usize>)> {
    let text = &buf[body.clone()];
    let sep = text.find(DS_SEP)?;
    let (head, tail) = (&text[..sep], &text[sep + DS_SEP.len()..]);
    let tail_start = body.start + sep + DS_SEP.len();
    let (name, json_start) = if head.trim() == "function" {
        // R1: `function<sep>NAME\n```json\n{…}\n```` .
        let nl = tail.find('\n')?;
        (tail[..nl].trim().to_string(), tail_start + nl + 1)
    } else {
        // V3.1: `NAME<sep>{…}`.
        (head.trim().to_string(), tail_start)
    };
    let mut json = &buf[json_start..body.end];
    json = json.trim();
    if let Some(j) = json
        .strip_prefix("```json")
        .or_else(|| json.strip_prefix("```"))
    {
        json = j.trim_start();
    }
    if let Some(j) = json.strip_suffix("```") {
        json = j.trim_end();
    }
    if name.is_empty() || !json.starts_with('{') {
        return None;
    }
    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(json).ok()?;
    let start = offset_in(buf, json)?;
    Some((name, start..start + json.len()))
}

/// A JSON call object (`{"name", "arguments" | "parameters"}`) at `range` of `buf`: the name,
/// the byte range of the arguments object in `buf`, or the decoded arguments when the model
/// wrote them as a JSON string.
fn json_call(
    buf: &str,
    range: std::ops::Range<usize>,
) -> Option<(String, std::ops::Range<usize>, Option<String>)> {
    #[derive(Deserialize)]
    struct Call<'a> {
        name: String,
        #[serde(borrow)]
        arguments: Option<&'a RawValue>,
        #[serde(borrow)]
        parameters: Option<&'a RawValue>,
    }
    let text = buf[range].trim();
    let call: Call<'_> = match serde_json::from_str(text) {
        Ok(call) => call,
        // `{{"name": …}}`: one doubled outer pair of braces, as the Qwen2.5-Coder template
        // shows the call.
        Err(_) => serde_json::from_str(
            text.strip_prefix('{')
                .and_then(|t| t.strip_suffix('}'))
                .filter(|t| t.trim_start().starts_with('{'))?,
        )
        .ok()?,
    };
    let raw = match (call.arguments, call.parameters) {
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => return Some((call.name, 0..0, Some("{}".into()))),
        (Some(_), Some(_)) => return None,
    };
    let args = raw.get();
    if args.starts_with('"') {
        let s: String = serde_json::from_str(args).ok()?;
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&s).ok()?;
        return Some((call.name, 0..0, Some(s)));
    }
    if !args.starts_with('{') {
        return None;
    }
    let start = offset_in(buf, args)?;
    Some((call.name, start..start + args.len(), None))
}

/// Byte offset of `part` (a subslice of `whole`) in `whole`.
fn offset_in(whole: &str, part: &str) -> Option<usize> {
    let off = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    (off + part.len() <= whole.len()).then_some(off)
}

#[cfg(test)]
mod tests;
