//! STOMP frames on the wire: the client commands, header escaping per version, bodies
//! ended by `content-length` or by NUL, and limits on what one frame may take. Nothing
//! here trusts its input: every malformed frame is a [`FrameError`].

use bytes::{Buf, Bytes, BytesMut};

/// Longest command line plus headers of one frame, in bytes.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most headers in one frame.
pub const MAX_HEADERS: usize = 256;

/// The protocol versions spoken, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V1_0,
    V1_1,
    V1_2,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }

    /// The highest version of an `accept-version` list this broker speaks (1.0 when the
    /// header is absent, as the 1.1 spec says); `None` when it names none of them.
    pub fn negotiate(accept: Option<&str>) -> Option<Version> {
        let Some(accept) = accept else {
            return Some(Version::V1_0);
        };
        accept
            .split(',')
            .filter_map(|v| match v.trim() {
                "1.0" => Some(Version::V1_0),
                "1.1" => Some(Version::V1_1),
                "1.2" => Some(Version::V1_2),
                _ => None,
            })
            .max()
    }
}

/// The frames a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCommand {
    Connect,
    Stomp,
    Send,
    Subscribe,
    Unsubscribe,
    Ack,
    Nack,
    Begin,
    Commit,
    Abort,
    Disconnect,
}

impl ClientCommand {
    fn parse(line: &[u8]) -> Option<Self> {
        Some(match line {
            b"CONNECT" => ClientCommand::Connect,
            b"STOMP" => ClientCommand::Stomp,
            b"SEND" => ClientCommand::Send,
            b"SUBSCRIBE" => ClientCommand::Subscribe,
            b"UNSUBSCRIBE" => ClientCommand::Unsubscribe,
            b"ACK" => ClientCommand::Ack,
            b"NACK" => ClientCommand::Nack,
            b"BEGIN" => ClientCommand::Begin,
            b"COMMIT" => ClientCommand::Commit,
            b"ABORT" => ClientCommand::Abort,
            b"DISCONNECT" => ClientCommand::Disconnect,
            _ => return None,
        })
    }

    /// CONNECT and STOMP headers are never escaped (the version is not known yet).
    fn escapes_headers(self) -> bool {
        !matches!(self, ClientCommand::Connect | ClientCommand::Stomp)
    }
}

/// A frame from a client.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub command: ClientCommand,
    /// In order; a repeated header's first value is the one that counts.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Frame {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why bytes from a client are not a frame.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrameError {
    #[error("unknown command `{0}`")]
    UnknownCommand(String),
    #[error("header line `{0}` has no `:`")]
    MalformedHeader(String),
    #[error("undefined escape sequence `\\{0}` in a header")]
    BadEscape(char),
    #[error("the command and headers of a frame exceed {MAX_HEADER_BYTES} bytes")]
    HeadersTooLarge,
    #[error("a frame has more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("the frame body exceeds {0} bytes")]
    BodyTooLarge(usize),
    #[error("content-length `{0}` is not a number of bytes")]
    BadContentLength(String),
    #[error("the body of content-length {0} is not followed by a NUL octet")]
    MissingNul(usize),
    #[error("a frame's command or headers are not UTF-8")]
    NotUtf8,
}

/// A frame whose headers are read and whose body is still arriving.
struct Pending {
    command: ClientCommand,
    headers: Vec<(String, String)>,
    content_length: Option<usize>,
    /// Bytes of the body already searched for its NUL (without content-length).
    searched: usize,
}

/// Reads frames from the bytes a connection receives, however they are split.
pub struct Decoder {
    version: Version,
    max_body: usize,
    pending: Option<Pending>,
}

impl Decoder {
    pub fn new(max_body: usize) -> Self {
        Decoder {
            version: Version::V1_0,
            max_body,
            pending: None,
        }
    }

    /// The negotiated version decides how headers are unescaped.
    pub fn set_version(&mut self, version: Version) {
        self.version = version;
    }

    /// The next whole frame of `buf` (taken out of it), `None` when more bytes are needed.
    /// Heart-beats (end-of-lines between frames) are skipped.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if self.pending.is_none() {
            skip_heartbeats(buf);
            if buf.is_empty() {
                return Ok(None);
            }
            let Some((head_len, body_start)) = find_blank_line(buf)? else {
                return Ok(None);
            };
            let pending = self.parse_head(&buf[..head_len])?;
            buf.advance(body_start);
            self.pending = Some(pending);
        }
        let pending = self.pending.as_mut().expect("set above");
        let body_len = match pending.content_length {
            Some(len) => {
                if buf.len() <= len {
                    return Ok(None);
                }
                if buf[len] != 0 {
                    return Err(FrameError::MissingNul(len));
                }
                len
            }
            None => match buf[pending.searched..].iter().position(|&b| b == 0) {
                Some(at) => pending.searched + at,
                None => {
                    pending.searched = buf.len();
                    if buf.len() > self.max_body {
                        return Err(FrameError::BodyTooLarge(self.max_body));
                    }
                    return Ok(None);
                }
            },
        };
        let pending = self.pending.take().expect("set above");
        let body = buf.split_to(body_len).freeze();
        buf.advance(1);
        Ok(Some(Frame {
            command: pending.command,
            headers: pending.headers,
            body,
        }))
    }

    fn parse_head(&self, head: &[u8]) -> Result<Pending, FrameError> {
        let mut lines = head.split(|&b| b == b'\n').map(strip_cr);
        let command_line = lines.next().unwrap_or_default();
        let command = ClientCommand::parse(command_line).ok_or_else(|| {
            FrameError::UnknownCommand(String::from_utf8_lossy(command_line).into_owned())
        })?;
        let escaped = command.escapes_headers() && self.version >= Version::V1_1;
        let mut headers = Vec::new();
        for line in lines {
            if headers.len() == MAX_HEADERS {
                return Err(FrameError::TooManyHeaders);
            }
            let text = std::str::from_utf8(line).map_err(|_| FrameError::NotUtf8)?;
            let (name, value) = text
                .split_once(':')
                .ok_or_else(|| FrameError::MalformedHeader(text.to_string()))?;
            let (name, value) = match escaped {
                true => (
                    unescape(name, self.version)?,
                    unescape(value, self.version)?,
                ),
                false => (name.to_string(), value.to_string()),
            };
            headers.push((name, value));
        }
        let content_length = match headers.iter().find(|(n, _)| n == "content-length") {
            None => None,
            Some((_, value)) => {
                let len: usize = value
                    .trim()
                    .parse()
                    .map_err(|_| FrameError::BadContentLength(value.clone()))?;
                if len > self.max_body {
                    return Err(FrameError::BodyTooLarge(self.max_body));
                }
                Some(len)
            }
        };
        Ok(Pending {
            command,
            headers,
            content_length,
            searched: 0,
        })
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Drops the end-of-lines clients send between frames as heart-beats (a lone `\r` at the
/// end waits for its `\n`).
fn skip_heartbeats(buf: &mut BytesMut) {
    let mut at = 0;
    while at < buf.len() {
        match (buf[at], buf.get(at + 1)) {
            (b'\n', _) => at += 1,
            (b'\r', Some(b'\n')) => at += 2,
            _ => break,
        }
    }
    buf.advance(at);
}

/// (length of the command and header lines, where the body starts) once the blank line
/// that ends the headers has arrived.
fn find_blank_line(buf: &[u8]) -> Result<Option<(usize, usize)>, FrameError> {
    let window = &buf[..buf.len().min(MAX_HEADER_BYTES + 3)];
    for (i, _) in window.iter().enumerate().filter(|(_, b)| **b == b'\n') {
        match (window.get(i + 1), window.get(i + 2)) {
            (Some(b'\n'), _) => return Ok(Some((i, i + 2))),
            (Some(b'\r'), Some(b'\n')) => return Ok(Some((i, i + 3))),
            _ => {}
        }
    }
    if buf.len() > MAX_HEADER_BYTES {
        return Err(FrameError::HeadersTooLarge);
    }
    Ok(None)
}

fn unescape(text: &str, version: Version) -> Result<String, FrameError> {
    if !text.contains('\\') {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('c') => out.push(':'),
            Some('\\') => out.push('\\'),
            Some('r') if version == Version::V1_2 => out.push('\r'),
            Some(other) => return Err(FrameError::BadEscape(other)),
            None => return Err(FrameError::BadEscape(' ')),
        }
    }
    Ok(out)
}

fn escape(text: &str, version: Version, out: &mut Vec<u8>) {
    for c in text.chars() {
        match (c, version) {
            ('\\', Version::V1_1 | Version::V1_2) => out.extend_from_slice(b"\\\\"),
            (':', Version::V1_1 | Version::V1_2) => out.extend_from_slice(b"\\c"),
            ('\n', Version::V1_1 | Version::V1_2) => out.extend_from_slice(b"\\n"),
            ('\r', Version::V1_2) => out.extend_from_slice(b"\\r"),
            // 1.0 has no escapes: a line break would end the header.
            ('\n' | '\r', _) => out.push(b' '),
            _ => {
                let mut utf8 = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
}

/// The frames the broker sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerCommand {
    Connected,
    Message,
    Receipt,
    Error,
}

impl ServerCommand {
    fn as_bytes(self) -> &'static [u8] {
        match self {
            ServerCommand::Connected => b"CONNECTED",
            ServerCommand::Message => b"MESSAGE",
            ServerCommand::Receipt => b"RECEIPT",
            ServerCommand::Error => b"ERROR",
        }
    }
}

/// A broker frame's bytes: headers escaped for `version` (never for CONNECTED), and a
/// `content-length` for every body.
pub fn encode(
    command: ServerCommand,
    headers: &[(&str, &str)],
    body: &[u8],
    version: Version,
) -> Bytes {
    let mut out = Vec::with_capacity(body.len() + 64 * (headers.len() + 1));
    out.extend_from_slice(command.as_bytes());
    out.push(b'\n');
    let version = match command {
        ServerCommand::Connected => Version::V1_0,
        _ => version,
    };
    for (name, value) in headers {
        escape(name, version, &mut out);
        out.push(b':');
        escape(value, version, &mut out);
        out.push(b'\n');
    }
    if matches!(command, ServerCommand::Message | ServerCommand::Error) || !body.is_empty() {
        out.extend_from_slice(format!("content-length:{}\n", body.len()).as_bytes());
    }
    out.push(b'\n');
    out.extend_from_slice(body);
    out.push(0);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(decoder: &mut Decoder, bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let mut buf = BytesMut::from(bytes);
        let mut frames = Vec::new();
        while let Some(frame) = decoder.decode(&mut buf)? {
            frames.push(frame);
        }
        Ok(frames)
    }

    #[test]
    fn frames_split_anywhere_and_packed_together() {
        let wire =
            b"\n\r\nSEND\ndestination:/queue/a\n\nhello\0\nSEND\r\ncontent-length:3\r\n\r\na\0b\0";
        for cut in 0..wire.len() {
            let mut decoder = Decoder::new(1024);
            let mut buf = BytesMut::new();
            let mut frames = Vec::new();
            for part in [&wire[..cut], &wire[cut..]] {
                buf.extend_from_slice(part);
                while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                    frames.push(frame);
                }
            }
            assert_eq!(frames.len(), 2, "cut at {cut}");
            assert_eq!(frames[0].header("destination"), Some("/queue/a"));
            assert_eq!(&frames[0].body[..], b"hello");
            assert_eq!(&frames[1].body[..], b"a\0b");
        }
    }

    #[test]
    fn headers_unescape_per_version_and_first_value_wins() {
        let wire = b"SEND\na\\cb:x\\\\y\\nz\\r\na\\cb:second\n\n\0";
        let mut decoder = Decoder::new(1024);
        decoder.set_version(Version::V1_2);
        let frame = &decode_all(&mut decoder, wire).unwrap()[0];
        assert_eq!(frame.header("a:b"), Some("x\\y\nz\r"));
        decoder.set_version(Version::V1_1);
        assert_eq!(
            decode_all(&mut decoder, wire),
            Err(FrameError::BadEscape('r'))
        );
        decoder.set_version(Version::V1_0);
        let frame = &decode_all(&mut decoder, wire).unwrap()[0];
        assert_eq!(frame.header("a\\cb"), Some("x\\\\y\\nz\\r"));
        // CONNECT is never unescaped.
        decoder.set_version(Version::V1_2);
        let frame = &decode_all(&mut decoder, b"CONNECT\npasscode:a\\b\n\n\0").unwrap()[0];
        assert_eq!(frame.header("passcode"), Some("a\\b"));
    }

    #[test]
    fn malformed_frames_are_typed_errors() {
        let cases: [(&[u8], FrameError); 6] = [
            (b"FLY\n\n\0", FrameError::UnknownCommand("FLY".into())),
            (
                b"SEND\nnocolon\n\n\0",
                FrameError::MalformedHeader("nocolon".into()),
            ),
            (
                b"SEND\ncontent-length:2\n\nabc\0",
                FrameError::MissingNul(2),
            ),
            (
                b"SEND\ncontent-length:x\n\n\0",
                FrameError::BadContentLength("x".into()),
            ),
            (
                b"SEND\ncontent-length:99999\n\n",
                FrameError::BodyTooLarge(1024),
            ),
            (b"SEND\na:\xff\n\n\0", FrameError::NotUtf8),
        ];
        for (wire, want) in cases {
            let mut decoder = Decoder::new(1024);
            decoder.set_version(Version::V1_2);
            assert_eq!(decode_all(&mut decoder, wire), Err(want));
        }
        let mut decoder = Decoder::new(1024);
        let endless = vec![b'a'; MAX_HEADER_BYTES + 10];
        assert_eq!(
            decode_all(&mut decoder, &endless),
            Err(FrameError::HeadersTooLarge)
        );
        let mut many = b"SEND\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("h{i}:v\n").as_bytes());
        }
        many.extend_from_slice(b"\n\0");
        assert_eq!(
            decode_all(&mut Decoder::new(1024), &many),
            Err(FrameError::TooManyHeaders)
        );
        let mut unended = b"SEND\n\n".to_vec();
        unended.extend(std::iter::repeat_n(b'x', 2000));
        assert_eq!(
            decode_all(&mut Decoder::new(1024), &unended),
            Err(FrameError::BodyTooLarge(1024))
        );
    }

    #[test]
    fn encodes_with_escapes_and_content_length() {
        let bytes = encode(
            ServerCommand::Message,
            &[("k:1", "a\nb")],
            b"x\0y",
            Version::V1_2,
        );
        assert_eq!(
            &bytes[..],
            b"MESSAGE\nk\\c1:a\\nb\ncontent-length:3\n\nx\0y\0"
        );
        let bytes = encode(
            ServerCommand::Connected,
            &[("v", "a:b")],
            b"",
            Version::V1_2,
        );
        assert_eq!(&bytes[..], b"CONNECTED\nv:a:b\n\n\0");
    }

    #[test]
    fn negotiates_the_highest_common_version() {
        assert_eq!(Version::negotiate(None), Some(Version::V1_0));
        assert_eq!(Version::negotiate(Some("1.1,1.2")), Some(Version::V1_2));
        assert_eq!(Version::negotiate(Some("1.0, 1.1")), Some(Version::V1_1));
        assert_eq!(Version::negotiate(Some("2.0")), None);
    }
}
