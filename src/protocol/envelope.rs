//! The keys the server reads from an object (`ip`, `type`, `id`), found in one pass that also
//! checks the whole object is valid JSON.
//!
//! This is the fast path of [`super::parse`], and it only ever says "valid, and these are the
//! keys" or "not sure": anything it does not settle in its single pass (an error, an escaped
//! key, a lone surrogate escape, whitespace, deep nesting) returns `None`, and `parse` then asks
//! `serde_json`, which decides and words the error. So an object is accepted or refused exactly
//! as `serde_json` would; the fuzz target `parse_frame` and the tests below hold the fast path
//! to that. It exists because serde_json's generic deserializer spent about 1,900 instructions
//! on a 30-byte item (visitor calls, raw-value keys, a separate UTF-8 pass) where one loop over
//! the bytes spends a few per byte (issue 28, docs/BENCHMARKS.md).

use std::ops::Range;

/// Raw JSON texts of the keys the server looks at, as slices of the object.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Envelope<'a> {
    /// The last `ip` key's value (the key matched case-insensitively).
    pub ip: Option<&'a str>,
    /// How many keys were `ip`, in any case: more than one is refused.
    pub ip_keys: u32,
    /// The last `type` key's value.
    pub kind: Option<&'a str>,
    /// The last `id` key's value.
    pub id: Option<&'a str>,
}

/// The bytes a string may hold as they are: all but `"`, `\\` and the control characters (the
/// UTF-8 of the others is checked once for the whole object).
const PLAIN: [bool; 256] = {
    let mut plain = [true; 256];
    let mut byte = 0;
    while byte < 0x20 {
        plain[byte] = false;
        byte += 1;
    }
    plain[b'"' as usize] = false;
    plain[b'\\' as usize] = false;
    plain
};

/// Nesting the single pass follows (a bit per level); deeper objects go to serde_json, whose
/// own limit (128) is above this one.
const MAX_DEPTH: u32 = 64;

/// The keys of `text` if it is, beyond doubt, one valid JSON object without whitespace between
/// its tokens; `None` when serde_json must decide. As text, for comparing with serde_json's
/// reading ([`super::message::read_envelope`]).
#[cfg(test)]
pub(super) fn scan(text: &[u8]) -> Option<Envelope<'_>> {
    let (len, keys) = scan_prefix(text).filter(|(len, _)| *len == text.len())?;
    let text = std::str::from_utf8(&text[..len]).expect("checked by the scan");
    let value = |range: Option<Range<usize>>| range.map(|r| &text[r]);
    Some(Envelope {
        ip: value(keys.ip),
        ip_keys: keys.ip_keys,
        kind: value(keys.kind),
        id: value(keys.id),
    })
}

/// The length and keys of a valid JSON object without whitespace between its tokens at the
/// start of `text` (anything may follow it), or `None` when serde_json must decide. The
/// decoder's fast path (`super::next_message`): an object checked here needs no other walk
/// over its bytes, its end is where the decoder's scan would find it (a valid compact object's
/// braces and brackets balance there), and it has no whitespace to remove.
pub(super) fn scan_prefix(text: &[u8]) -> Option<(usize, Keys)> {
    let mut scanner = Scanner { text, at: 0 };
    let mut keys = Keys::default();
    scanner.expect(b'{')?;
    if scanner.peek()? == b'}' {
        scanner.at += 1;
    } else {
        loop {
            scanner.expect(b'"')?;
            let key = scanner.key()?;
            scanner.expect(b':')?;
            let start = scanner.at;
            scanner.value()?;
            let value = start..scanner.at;
            if key.eq_ignore_ascii_case(b"ip") {
                keys.ip = Some(value);
                keys.ip_keys += 1;
            } else if key == b"type" {
                keys.kind = Some(value);
            } else if key == b"id" {
                keys.id = Some(value);
            }
            match scanner.next()? {
                b',' => {}
                b'}' => break,
                _ => return None,
            }
        }
    }
    let len = scanner.at;
    // Bytes above ASCII pass inside strings only: checked here, once, whole (most objects are
    // ASCII, which a word at a time tells). Values begin and end at ASCII bytes, so each is
    // text too.
    let object = &text[..len];
    (object.is_ascii() || std::str::from_utf8(object).is_ok()).then_some((len, keys))
}

/// Where an [`Envelope`]'s values are in the object, so that they outlive the borrow of the
/// bytes they were read from (the object becomes a [`bytes::Bytes`] after it is read).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Keys {
    pub ip: Option<Range<usize>>,
    pub ip_keys: u32,
    pub kind: Option<Range<usize>>,
    pub id: Option<Range<usize>>,
}

impl Envelope<'_> {
    /// The positions of the values in `object`, the text they were read from.
    pub(super) fn locate(&self, object: &[u8]) -> Keys {
        let base = object.as_ptr() as usize;
        let range = |value: Option<&str>| {
            value.map(|value| {
                let start = value.as_ptr() as usize - base;
                start..start + value.len()
            })
        };
        Keys {
            ip: range(self.ip),
            ip_keys: self.ip_keys,
            kind: range(self.kind),
            id: range(self.id),
        }
    }
}

struct Scanner<'a> {
    text: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    /// A key's name, after its opening quote: one without escapes only (an escaped key might
    /// spell `ip`; serde_json decodes it).
    fn key(&mut self) -> Option<&'a [u8]> {
        let start = self.at;
        let escaped = self.string()?;
        (!escaped).then(|| &self.text[start..self.at - 1])
    }

    /// The rest of a string after its opening quote. Refuses a raw control character (JSON
    /// forbids them in strings), an unknown escape and a `\u` escape of a UTF-16 surrogate
    /// (half of a pair, or a lone one: serde_json decides those). True when it held an escape.
    fn string(&mut self) -> Option<bool> {
        let mut escaped = false;
        loop {
            // Most string bytes need no decision: skipped by a table look-up each.
            let rest = self.text.get(self.at..)?;
            self.at += rest.iter().take_while(|&&b| PLAIN[usize::from(b)]).count();
            match self.next()? {
                b'"' => return Some(escaped),
                b'\\' => {
                    escaped = true;
                    match self.next()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            let mut unit = 0u32;
                            for _ in 0..4 {
                                unit = unit * 16 + (self.next()? as char).to_digit(16)?;
                            }
                            if (0xD800..=0xDFFF).contains(&unit) {
                                return None;
                            }
                        }
                        _ => return None,
                    }
                }
                // A raw control character.
                _ => return None,
            }
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, its first byte already read. What
    /// follows it is the caller's to check (a digit cannot: they were all taken).
    fn number(&mut self, first: u8) -> Option<()> {
        let lead = if first == b'-' { self.next()? } else { first };
        match lead {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.some_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.some_digits()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }

    fn literal(&mut self, rest: &[u8]) -> Option<()> {
        let end = self.at + rest.len();
        (self.text.get(self.at..end)? == rest).then(|| self.at = end)
    }

    /// One value, containers included: a loop with a bit per open container (1 = object), not
    /// recursion.
    fn value(&mut self) -> Option<()> {
        let (mut objects, mut depth) = (0u64, 0u32);
        loop {
            // A value starts here.
            match self.next()? {
                b'"' => {
                    self.string()?;
                }
                b'{' | b'[' if depth == MAX_DEPTH => return None,
                b'{' => {
                    if self.peek() == Some(b'}') {
                        self.at += 1;
                    } else {
                        objects |= 1 << depth;
                        depth += 1;
                        self.member_key()?;
                        continue;
                    }
                }
                b'[' => {
                    if self.peek() == Some(b']') {
                        self.at += 1;
                    } else {
                        objects &= !(1 << depth);
                        depth += 1;
                        continue;
                    }
                }
                b't' => self.literal(b"rue")?,
                b'f' => self.literal(b"alse")?,
                b'n' => self.literal(b"ull")?,
                first @ (b'-' | b'0'..=b'9') => self.number(first)?,
                _ => return None,
            }
            // A value ended: close what it ends, until a comma asks for the next one.
            loop {
                if depth == 0 {
                    return Some(());
                }
                let in_object = objects & (1 << (depth - 1)) != 0;
                match self.next()? {
                    b',' => {
                        if in_object {
                            self.member_key()?;
                        }
                        break;
                    }
                    b'}' if in_object => depth -= 1,
                    b']' if !in_object => depth -= 1,
                    _ => return None,
                }
            }
        }
    }

    /// `"key":` inside a nested object (its name is no concern of the server's).
    fn member_key(&mut self) -> Option<()> {
        self.expect(b'"')?;
        self.string()?;
        self.expect(b':')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_keys_of_a_plain_item() {
        let envelope = scan(br#"{"id":"a-1","IP":"10.0.0.1","n":[1,{"ip":2}],"type":"x"}"#);
        assert_eq!(
            envelope,
            Some(Envelope {
                ip: Some(r#""10.0.0.1""#),
                ip_keys: 1,
                kind: Some(r#""x""#),
                id: Some(r#""a-1""#),
            })
        );
        let twice = scan(br#"{"ip":"1.1.1.1","Ip":"2.2.2.2"}"#).unwrap();
        assert_eq!((twice.ip, twice.ip_keys), (Some(r#""2.2.2.2""#), 2));
    }

    #[test]
    fn accepts_every_kind_of_value() {
        for text in [
            "{}",
            r#"{"a":{}}"#,
            r#"{"a":[]}"#,
            r#"{"a":[[[]],{},{"b":[{}]}]}"#,
            r#"{"a":true,"b":false,"c":null}"#,
            r#"{"a":0,"b":-0,"c":12.5e-3,"d":1E+9,"e":-7.0,"f":123456789012345678901234567890}"#,
            r#"{"a":"\"\\\/\b\f\n\r\t\u00e9\u0000\uFFFF","b":"é ☃ \u2028 x"}"#,
            r#"{"":1,"a":"","b":[""]}"#,
        ] {
            assert!(scan(text.as_bytes()).is_some(), "{text}");
            serde_json::from_str::<serde::de::IgnoredAny>(text).expect(text);
        }
    }

    #[test]
    fn leaves_to_serde_json_what_it_does_not_settle() {
        for text in [
            "",
            "{",
            "[]",
            r#"{"a":1"#,
            r#"{"a":1}x"#,
            r#"{"a":1,}"#,
            r#"{"a" :1}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":1e}"#,
            r#"{"a":-}"#,
            r#"{"a":+1}"#,
            r#"{"a":tru}"#,
            r#"{"a":nul}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":[1}"#,
            r#"{"a":{"b"}}"#,
            r#"{"a":{"b":1,}}"#,
            r#"{"a":{1:2}}"#,
            r#"{1:2}"#,
            r#"{"a":"\x"}"#,
            r#"{"a":"\u12"}"#,
            r#"{"a":"\uD800"}"#,
            r#"{"a":"\ud83d\ude00"}"#,
            r#"{"\u0069p":"1.1.1.1"}"#,
            "{\"a\":\"\u{1}\"}",
            "{\"a\":\"\t\"}",
            "{\"a\":1 }",
        ] {
            assert_eq!(scan(text.as_bytes()), None, "{text:?}");
        }
        assert_eq!(scan(b"{\"a\":\"\xff\"}"), None);
        assert_eq!(scan(b"{\"a\":\"\xc3\"}"), None);
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(65), "]".repeat(65));
        assert_eq!(scan(deep.as_bytes()), None);
        let deep_enough = format!("{{\"a\":{}1{}}}", "[".repeat(64), "]".repeat(64));
        assert!(scan(deep_enough.as_bytes()).is_some());
    }

    /// Every object the scan accepts, serde_json accepts too, and the keys are the ones serde_json
    /// reads: random objects, half of them with one byte changed, inserted or removed (the fuzz
    /// target `parse_frame` holds this over arbitrary bytes).
    #[test]
    fn never_accepts_what_serde_json_refuses() {
        let mut random = Random(0x2545_F491_4F6C_DD1D);
        let (mut accepted, mut refused) = (0, 0);
        for round in 0..100_000 {
            let mut text = Vec::new();
            random.object(&mut text, 0);
            if round % 2 == 1 {
                random.mutate(&mut text);
            }
            match scan(&text) {
                Some(keys) => {
                    accepted += 1;
                    let theirs = super::super::message::read_envelope(&text);
                    assert_eq!(Ok(keys), theirs, "{:?}", String::from_utf8_lossy(&text));
                }
                None => refused += 1,
            }
        }
        assert!(
            accepted > 40_000 && refused > 20_000,
            "{accepted} accepted, {refused} not"
        );
    }

    /// xorshift64: a fixed sequence, so a failure repeats.
    struct Random(u64);

    impl Random {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }

        fn pick<'a>(&mut self, choices: &[&'a str]) -> &'a str {
            choices[self.below(choices.len())]
        }

        fn object(&mut self, out: &mut Vec<u8>, depth: usize) {
            out.push(b'{');
            for i in 0..self.below(4) {
                if i > 0 {
                    out.push(b',');
                }
                let key = self.pick(&[
                    "\"ip\"", "\"IP\"", "\"id\"", "\"type\"", "\"n\"", "\"\"", "\"\\n\"",
                ]);
                out.extend_from_slice(key.as_bytes());
                out.push(b':');
                self.value(out, depth + 1);
            }
            out.push(b'}');
        }

        fn value(&mut self, out: &mut Vec<u8>, depth: usize) {
            let kind = if depth > 3 {
                self.below(5)
            } else {
                self.below(7)
            };
            match kind {
                0 => {
                    let text = self.pick(&[
                        "\"1.2.3.4\"",
                        "\"\"",
                        "\"a\\\"b\"",
                        "\"\\u00e9\\/\"",
                        "\"é☃\"",
                        "\"\\uD83D\\uDE00\"",
                    ]);
                    out.extend_from_slice(text.as_bytes());
                }
                1 => {
                    let text = self.pick(&["0", "-0", "12", "-3.25", "1e9", "2.5E-7", "-0.0e+1"]);
                    out.extend_from_slice(text.as_bytes());
                }
                2 => out.extend_from_slice(self.pick(&["true", "false", "null"]).as_bytes()),
                3 | 4 => out.extend_from_slice(b"7"),
                5 => {
                    out.push(b'[');
                    for i in 0..self.below(4) {
                        if i > 0 {
                            out.push(b',');
                        }
                        self.value(out, depth + 1);
                    }
                    out.push(b']');
                }
                _ => self.object(out, depth),
            }
        }

        fn mutate(&mut self, text: &mut Vec<u8>) {
            const BYTES: &[u8] = b"{}[],:\"\\0123456789-+.eEtrufalsn \t\x01\xc3\xa9\xff";
            let at = self.below(text.len() + 1);
            let byte = BYTES[self.below(BYTES.len())];
            match self.below(3) {
                0 if at < text.len() => text[at] = byte,
                1 if at < text.len() => {
                    text.remove(at);
                }
                _ => text.insert(at, byte),
            }
        }
    }
}
