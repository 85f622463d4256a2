//! SPDY/3.1 framing: the frames kubelet's streaming clients (client-go over moby/spdystream)
//! send and expect, and the zlib-compressed header blocks with the SPDY/3 dictionary.
//!
//! Hand-written: no maintained Rust SPDY crate exists. Spec: "SPDY Protocol - Draft 3.1"
//! (chromium.org/spdy/spdy-protocol/spdy-protocol-draft3-1). Each direction of a connection
//! has one compression context for all its header blocks, so a connection needs exactly one
//! [`FrameDecoder`] for what it reads and one [`FrameEncoder`] for what it writes. Public so
//! that tests can speak SPDY to the server with the same codec.

use std::sync::LazyLock;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

pub const VERSION: u16 = 3;
/// Every stream's send window at the start, until SETTINGS says otherwise (SPDY/3.1 §2.6.8),
/// and the connection's window.
pub const INITIAL_WINDOW: u32 = 64 * 1024;
/// Frame lengths are 24-bit.
pub const MAX_FRAME_PAYLOAD: usize = (1 << 24) - 1;

pub const SYN_STREAM: u16 = 1;
pub const SYN_REPLY: u16 = 2;
pub const RST_STREAM: u16 = 3;
pub const SETTINGS: u16 = 4;
pub const PING: u16 = 6;
pub const GOAWAY: u16 = 7;
pub const HEADERS: u16 = 8;
pub const WINDOW_UPDATE: u16 = 9;

/// The last frame the sender sends on a stream (control and data frames).
pub const FLAG_FIN: u8 = 0x01;
/// SYN_STREAM: the receiver must not send on this stream.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// SETTINGS id of the initial per-stream window size.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;

/// RST_STREAM status codes (§2.6.3).
pub const PROTOCOL_ERROR: u32 = 1;
pub const INVALID_STREAM: u32 = 2;
pub const REFUSED_STREAM: u32 = 3;
pub const CANCEL: u32 = 5;
pub const INTERNAL_ERROR: u32 = 6;
pub const FLOW_CONTROL_ERROR: u32 = 7;
pub const STREAM_IN_USE: u32 = 8;
pub const STREAM_ALREADY_CLOSED: u32 = 9;

/// Largest decompressed header block accepted: bounds what one frame can make us allocate.
const MAX_HEADER_BLOCK: usize = 1 << 20;
const MAX_HEADERS: u32 = 1000;

/// Name/value pairs of a header block; names are lower case, several values of one name
/// are joined by NUL on the wire and kept joined here.
pub type Headers = Vec<(String, String)>;

/// Value of `name` in `headers` (names compare case-insensitively).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        /// 0 (highest) to 7.
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        flags: u8,
        /// (flags, id, value) per entry.
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
    /// A control frame of a type not listed above; the spec says to ignore it.
    Unknown {
        frame_type: u16,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("SPDY version {0} is not supported (only 3)")]
    Version(u16),
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    #[error("frame payload of {0} bytes is too large")]
    TooLarge(usize),
    #[error("header block: {0}")]
    HeaderBlock(String),
}

/// The SPDY/3 header compression dictionary (§2.6.10.1): length-prefixed header names and
/// values, then common value fragments.
static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417",
        "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently",
        "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error",
        "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct ",
        "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,",
        "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,",
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=",
        "iso-8859-1,utf-,*,enq=0.",
    );
    let mut d = Vec::with_capacity(1423);
    for w in WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(TAIL.as_bytes());
    d
});

/// Reads frames; owns the connection's inbound header decompression context.
pub struct FrameDecoder {
    inflate: Decompress,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    pub fn new() -> FrameDecoder {
        FrameDecoder {
            inflate: Decompress::new(true),
        }
    }

    /// The next whole frame at the start of `src` (consumed), or None if more bytes are
    /// needed. An error leaves the connection unusable: the compression context may be out
    /// of step with the peer's.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, Error> {
        if src.len() < 8 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([0, src[5], src[6], src[7]]) as usize;
        if src.len() < 8 + len {
            src.reserve(8 + len - src.len());
            return Ok(None);
        }
        let first = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        let flags = src[4];
        src.advance(8);
        let mut p = src.split_to(len).freeze();
        if first & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data {
                stream_id: first & 0x7fff_ffff,
                flags,
                data: p,
            }));
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(Error::Version(version));
        }
        let frame_type = (first & 0xffff) as u16;
        let need = |p: &Bytes, n: usize, what| {
            if p.len() < n {
                Err(Error::Malformed(what))
            } else {
                Ok(())
            }
        };
        Ok(Some(match frame_type {
            SYN_STREAM => {
                need(&p, 10, "SYN_STREAM")?;
                let stream_id = p.get_u32() & 0x7fff_ffff;
                let associated_to = p.get_u32() & 0x7fff_ffff;
                let priority = p.get_u8() >> 5;
                let _slot = p.get_u8();
                Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    flags,
                    headers: self.header_block(&p)?,
                }
            }
            SYN_REPLY => {
                need(&p, 4, "SYN_REPLY")?;
                let stream_id = p.get_u32() & 0x7fff_ffff;
                Frame::SynReply {
                    stream_id,
                    flags,
                    headers: self.header_block(&p)?,
                }
            }
            HEADERS => {
                need(&p, 4, "HEADERS")?;
                let stream_id = p.get_u32() & 0x7fff_ffff;
                Frame::Headers {
                    stream_id,
                    flags,
                    headers: self.header_block(&p)?,
                }
            }
            RST_STREAM => {
                need(&p, 8, "RST_STREAM")?;
                Frame::RstStream {
                    stream_id: p.get_u32() & 0x7fff_ffff,
                    status: p.get_u32(),
                }
            }
            SETTINGS => {
                need(&p, 4, "SETTINGS")?;
                let n = p.get_u32() as usize;
                if p.len() != n.saturating_mul(8) {
                    return Err(Error::Malformed("SETTINGS"));
                }
                let entries = (0..n)
                    .map(|_| {
                        let id = p.get_u32();
                        ((id >> 24) as u8, id & 0xff_ffff, p.get_u32())
                    })
                    .collect();
                Frame::Settings { flags, entries }
            }
            PING => {
                need(&p, 4, "PING")?;
                Frame::Ping { id: p.get_u32() }
            }
            GOAWAY => {
                need(&p, 8, "GOAWAY")?;
                Frame::GoAway {
                    last_good_stream_id: p.get_u32() & 0x7fff_ffff,
                    status: p.get_u32(),
                }
            }
            WINDOW_UPDATE => {
                need(&p, 8, "WINDOW_UPDATE")?;
                Frame::WindowUpdate {
                    stream_id: p.get_u32() & 0x7fff_ffff,
                    delta: p.get_u32() & 0x7fff_ffff,
                }
            }
            other => Frame::Unknown { frame_type: other },
        }))
    }

    fn header_block(&mut self, compressed: &[u8]) -> Result<Headers, Error> {
        let raw = self.inflate(compressed)?;
        parse_header_block(&raw)
    }

    /// Inflates one header block; the zlib stream continues across blocks (sync-flushed).
    fn inflate(&mut self, mut input: &[u8]) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(input.len() * 4 + 256);
        loop {
            if out.capacity() - out.len() < 256 {
                if out.len() >= MAX_HEADER_BLOCK {
                    return Err(Error::HeaderBlock(format!(
                        "larger than {MAX_HEADER_BLOCK} bytes"
                    )));
                }
                out.reserve(out.len().max(1024));
            }
            let (in0, out0) = (self.inflate.total_in(), out.len());
            let r = self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = (self.inflate.total_in() - in0) as usize;
            input = &input[used..];
            match r {
                Ok(Status::StreamEnd) => break,
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&DICTIONARY)
                        .map_err(|e| Error::HeaderBlock(e.to_string()))?;
                    continue;
                }
                Err(e) => return Err(Error::HeaderBlock(e.to_string())),
            }
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
            if used == 0 && out.len() == out0 {
                return Err(Error::HeaderBlock("inflate made no progress".into()));
            }
        }
        Ok(out)
    }
}

fn parse_header_block(mut b: &[u8]) -> Result<Headers, Error> {
    let bad = |m: &str| Error::HeaderBlock(m.to_string());
    if b.len() < 4 {
        return Err(bad("truncated"));
    }
    let n = b.get_u32();
    if n > MAX_HEADERS {
        return Err(bad("too many headers"));
    }
    let take = |b: &mut &[u8]| -> Result<String, Error> {
        if b.len() < 4 {
            return Err(bad("truncated"));
        }
        let len = b.get_u32() as usize;
        if b.len() < len {
            return Err(bad("truncated"));
        }
        let s = String::from_utf8(b[..len].to_vec()).map_err(|_| bad("not UTF-8"))?;
        b.advance(len);
        Ok(s)
    };
    let mut headers = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let name = take(&mut b)?.to_ascii_lowercase();
        let value = take(&mut b)?;
        headers.push((name, value));
    }
    Ok(headers)
}

/// Writes frames; owns the connection's outbound header compression context.
pub struct FrameEncoder {
    deflate: Compress,
}

impl Default for FrameEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameEncoder {
    pub fn new() -> FrameEncoder {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(&DICTIONARY)
            .expect("a fresh deflate stream takes a dictionary");
        FrameEncoder { deflate }
    }

    /// Appends `frame` to `dst`. Fails only for a frame too large for the 24-bit length.
    pub fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), Error> {
        let control = |dst: &mut BytesMut, ty: u16, flags: u8, payload: &[u8]| {
            if payload.len() > MAX_FRAME_PAYLOAD {
                return Err(Error::TooLarge(payload.len()));
            }
            dst.reserve(8 + payload.len());
            dst.put_u16(0x8000 | VERSION);
            dst.put_u16(ty);
            dst.put_u32((flags as u32) << 24 | payload.len() as u32);
            dst.put_slice(payload);
            Ok(())
        };
        match frame {
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                flags,
                headers,
            } => {
                let mut p = Vec::new();
                p.put_u32(*stream_id);
                p.put_u32(*associated_to);
                p.put_u8(priority << 5);
                p.put_u8(0);
                self.header_block(headers, &mut p)?;
                control(dst, SYN_STREAM, *flags, &p)
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            } => {
                let mut p = Vec::new();
                p.put_u32(*stream_id);
                self.header_block(headers, &mut p)?;
                control(dst, SYN_REPLY, *flags, &p)
            }
            Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                let mut p = Vec::new();
                p.put_u32(*stream_id);
                self.header_block(headers, &mut p)?;
                control(dst, HEADERS, *flags, &p)
            }
            Frame::RstStream { stream_id, status } => {
                let mut p = [0u8; 8];
                p[..4].copy_from_slice(&stream_id.to_be_bytes());
                p[4..].copy_from_slice(&status.to_be_bytes());
                control(dst, RST_STREAM, 0, &p)
            }
            Frame::Settings { flags, entries } => {
                let mut p = Vec::with_capacity(4 + entries.len() * 8);
                p.put_u32(entries.len() as u32);
                for (f, id, value) in entries {
                    p.put_u32((*f as u32) << 24 | (id & 0xff_ffff));
                    p.put_u32(*value);
                }
                control(dst, SETTINGS, *flags, &p)
            }
            Frame::Ping { id } => control(dst, PING, 0, &id.to_be_bytes()),
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                let mut p = [0u8; 8];
                p[..4].copy_from_slice(&last_good_stream_id.to_be_bytes());
                p[4..].copy_from_slice(&status.to_be_bytes());
                control(dst, GOAWAY, 0, &p)
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let mut p = [0u8; 8];
                p[..4].copy_from_slice(&stream_id.to_be_bytes());
                p[4..].copy_from_slice(&delta.to_be_bytes());
                control(dst, WINDOW_UPDATE, 0, &p)
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if data.len() > MAX_FRAME_PAYLOAD {
                    return Err(Error::TooLarge(data.len()));
                }
                dst.reserve(8 + data.len());
                dst.put_u32(stream_id & 0x7fff_ffff);
                dst.put_u32((*flags as u32) << 24 | data.len() as u32);
                dst.put_slice(data);
                Ok(())
            }
            Frame::Unknown { .. } => Ok(()),
        }
    }

    /// Compresses a header block onto `out` with a sync flush, as the peer's one inflate
    /// stream expects.
    fn header_block(&mut self, headers: &Headers, out: &mut Vec<u8>) -> Result<(), Error> {
        let mut raw = Vec::new();
        raw.put_u32(headers.len() as u32);
        for (k, v) in headers {
            raw.put_u32(k.len() as u32);
            raw.extend(k.bytes().map(|c| c.to_ascii_lowercase()));
            raw.put_u32(v.len() as u32);
            raw.put_slice(v.as_bytes());
        }
        let mut input = &raw[..];
        loop {
            out.reserve(input.len() + 64);
            let in0 = self.deflate.total_in();
            self.deflate
                .compress_vec(input, out, FlushCompress::Sync)
                .map_err(|e| Error::HeaderBlock(e.to_string()))?;
            input = &input[(self.deflate.total_in() - in0) as usize..];
            // Done once all input is in and the flush did not fill the buffer.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(enc: &mut FrameEncoder, dec: &mut FrameDecoder, f: Frame) {
        let mut buf = BytesMut::new();
        enc.encode(&f, &mut buf).unwrap();
        // Byte by byte: a partial frame is not a frame.
        let mut partial = BytesMut::new();
        let bytes = buf.to_vec();
        for (i, b) in bytes.iter().enumerate() {
            partial.put_u8(*b);
            let got = dec.decode(&mut partial).unwrap();
            if i + 1 < bytes.len() {
                assert_eq!(got, None);
            } else {
                assert_eq!(got, Some(f.clone()));
            }
        }
        assert!(partial.is_empty());
    }

    #[test]
    fn dictionary_is_the_spdy3_one() {
        assert_eq!(DICTIONARY.len(), 1423);
        // The dictionary id a SPDY/3 zlib stream names (Adler-32).
        let mut d = Decompress::new(true);
        let mut out = Vec::with_capacity(16);
        let err = d
            .decompress_vec(
                &hex::decode("78f9e3c6a7c2").unwrap(),
                &mut out,
                FlushDecompress::Sync,
            )
            .unwrap_err();
        assert_eq!(err.needs_dictionary(), Some(0xe3c6a7c2));
        assert_eq!(d.set_dictionary(&DICTIONARY).unwrap(), 0xe3c6a7c2);
    }

    /// Two header blocks compressed by C zlib (Python's `zlib.compressobj` with the SPDY/3
    /// dictionary, one stream, sync flushes), as another implementation would send them.
    #[test]
    fn decodes_header_blocks_of_another_implementation() {
        let block1 =
            hex::decode("78f9e3c6a7c202a62346703a2b294a4dcc851625c0149b925f5a02000000ffff")
                .unwrap();
        let block2 = hex::decode("02e51c48d95c04ce0616061606186a41c54e22000000ffff").unwrap();
        let mut dec = FrameDecoder::new();
        let mut src = BytesMut::new();
        for (id, block) in [(1u32, &block1), (3, &block2)] {
            let mut p = Vec::new();
            p.put_u32(id);
            p.put_u32(0);
            p.put_u16(0);
            p.extend_from_slice(block);
            src.put_u16(0x8003);
            src.put_u16(SYN_STREAM);
            src.put_u32(p.len() as u32);
            src.put_slice(&p);
        }
        assert_eq!(
            dec.decode(&mut src).unwrap(),
            Some(Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                flags: 0,
                headers: vec![("streamtype".into(), "stdout".into())],
            })
        );
        let Some(Frame::SynStream { headers, .. }) = dec.decode(&mut src).unwrap() else {
            panic!("second SYN_STREAM");
        };
        assert_eq!(header(&headers, "port"), Some("8080"));
        assert_eq!(header(&headers, "streamType"), Some("data"));
    }

    #[test]
    fn every_frame_roundtrips_with_one_context_per_direction() {
        let mut enc = FrameEncoder::new();
        let mut dec = FrameDecoder::new();
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 3,
                flags: FLAG_FIN,
                headers: vec![
                    ("streamtype".into(), "error".into()),
                    ("x".into(), "a\0b".into()),
                ],
            },
            Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: vec![],
            },
            Frame::Headers {
                stream_id: 1,
                flags: FLAG_FIN,
                headers: vec![("streamtype".into(), "error".into())],
            },
            Frame::RstStream {
                stream_id: 5,
                status: CANCEL,
            },
            Frame::Settings {
                flags: 0,
                entries: vec![(0, SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20)],
            },
            Frame::Ping { id: 7 },
            Frame::GoAway {
                last_good_stream_id: 9,
                status: 0,
            },
            Frame::WindowUpdate {
                stream_id: 0,
                delta: 1234,
            },
            Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"hello"),
            },
            Frame::Data {
                stream_id: 3,
                flags: 0,
                data: Bytes::from(vec![7u8; 100_000]),
            },
        ];
        for f in frames {
            roundtrip(&mut enc, &mut dec, f);
        }
        // Later blocks depend on the shared context: a big one still decodes.
        let big: Headers = (0..200)
            .map(|i| (format!("h{i}"), "v".repeat(i * 10)))
            .collect();
        roundtrip(
            &mut enc,
            &mut dec,
            Frame::SynReply {
                stream_id: 3,
                flags: 0,
                headers: big,
            },
        );
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut dec = FrameDecoder::new();
        // SPDY/2
        let mut src = BytesMut::from(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert!(matches!(dec.decode(&mut src), Err(Error::Version(2))));
        // RST_STREAM with a 4-byte payload
        let mut src = BytesMut::from(&[0x80, 3, 0, 3, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert!(matches!(dec.decode(&mut src), Err(Error::Malformed(_))));
        // A header block that is not zlib
        let mut src = BytesMut::from(&[0x80, 3, 0, 2, 0, 0, 0, 8, 0, 0, 0, 1, 1, 2, 3, 4][..]);
        assert!(matches!(dec.decode(&mut src), Err(Error::HeaderBlock(_))));
        // Unknown control frames are skipped whole.
        let mut src = BytesMut::from(&[0x80, 3, 0, 0x0a, 0, 0, 0, 2, 9, 9, 0x80][..]);
        assert_eq!(
            dec.decode(&mut src).unwrap(),
            Some(Frame::Unknown { frame_type: 0x0a })
        );
        assert_eq!(&src[..], &[0x80]);
    }
}
