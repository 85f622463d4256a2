//! Framing of the shim protocol: each message is a protobuf message preceded by its length
//! as a varint (prost's `encode_length_delimited`). These helpers find message boundaries
//! in a byte buffer that is filled a piece at a time, for the shim's poll loop and the
//! daemon's client alike.

/// Largest message either side accepts: an ExecSync answer with both outputs at their
/// limit (`exec::MAX_OUTPUT`, 8 MiB each) and some room; anything bigger is a garbled
/// stream. Other messages are tiny.
pub const MAX_MESSAGE: usize = (16 << 20) + (64 << 10);

/// What the start of a buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// Not enough bytes yet for a whole message.
    Incomplete,
    /// A whole message: its body is `buf[header..header + len]`.
    Complete { header: usize, len: usize },
    /// Not a length prefix, or a length over [`MAX_MESSAGE`]: the stream cannot be resynced.
    Invalid(String),
}

pub fn split(buf: &[u8]) -> Frame {
    let mut len: u64 = 0;
    for (i, b) in buf.iter().enumerate().take(10) {
        len |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let header = i + 1;
            if len > MAX_MESSAGE as u64 {
                return Frame::Invalid(format!(
                    "message of {len} bytes is over the limit of {MAX_MESSAGE}"
                ));
            }
            let len = len as usize;
            return if buf.len() >= header + len {
                Frame::Complete { header, len }
            } else {
                Frame::Incomplete
            };
        }
    }
    if buf.len() >= 10 {
        Frame::Invalid("bad length prefix".into())
    } else {
        Frame::Incomplete
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::shim::{PingRequest, Request, request::Kind};
    use prost::Message;

    #[test]
    fn frames() {
        assert_eq!(split(&[]), Frame::Incomplete);
        assert_eq!(split(&[0]), Frame::Complete { header: 1, len: 0 });
        assert_eq!(split(&[3, 1, 2]), Frame::Incomplete);
        assert_eq!(split(&[2, 1, 2, 9]), Frame::Complete { header: 1, len: 2 });
        // 300 = 0xac 0x02
        assert_eq!(split(&[0xac]), Frame::Incomplete);
        assert_eq!(split(&[0xac, 0x02]), Frame::Incomplete);
        let mut big = vec![0xac, 0x02];
        big.extend([0u8; 300]);
        assert_eq!(
            split(&big),
            Frame::Complete {
                header: 2,
                len: 300
            }
        );
        assert!(matches!(split(&[0xff; 10]), Frame::Invalid(_)));
        // 2^28 > MAX_MESSAGE
        assert!(matches!(
            split(&[0x80, 0x80, 0x80, 0x80, 0x01]),
            Frame::Invalid(_)
        ));

        let req = Request {
            kind: Some(Kind::Ping(PingRequest {})),
        };
        let enc = req.encode_length_delimited_to_vec();
        let Frame::Complete { header, len } = split(&enc) else {
            panic!()
        };
        assert_eq!(Request::decode(&enc[header..header + len]).unwrap(), req);
    }
}
