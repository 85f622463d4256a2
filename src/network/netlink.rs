//! Netlink helpers: the loopback interface of a new network namespace.
//!
//! Plain blocking rtnetlink on a `netlink-sys` socket (no async runtime: the shim calls this
//! right after it made the pod's network namespace). The socket acts on the network
//! namespace of the thread that opens it.

use std::io;

use netlink_packet_core::{
    ErrorBuffer, NLM_F_ACK, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("netlink socket: {0}")]
    Socket(io::Error),
    #[error("netlink: set link {link} up: {source}")]
    LinkUp { link: String, source: io::Error },
    #[error("netlink: bad answer setting link {link} up: {reason}")]
    Decode { link: String, reason: String },
}

/// Sets the interface called `name` up (`ip link set <name> up`) in the caller's network
/// namespace.
pub fn link_up(name: &str) -> Result<(), Error> {
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(Error::Socket)?;
    socket.bind_auto().map_err(Error::Socket)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(Error::Socket)?;

    let mut link = LinkMessage::default();
    // Index 0 with IFLA_IFNAME: the kernel looks the link up by name.
    link.header.flags = LinkFlags::Up;
    link.header.change_mask = LinkFlags::Up;
    link.attributes
        .push(LinkAttribute::IfName(name.to_string()));
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    header.sequence_number = 1;
    let mut msg = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::SetLink(link)),
    );
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);

    let io_err = |source: io::Error| Error::LinkUp {
        link: name.to_string(),
        source,
    };
    socket.send(&buf, 0).map_err(io_err)?;

    // Only the header and the error code of the answer are read: parsing it as a
    // RouteNetlinkMessage would link every rtnetlink parser into the shim.
    let decode = |reason: String| Error::Decode {
        link: name.to_string(),
        reason,
    };
    let mut rx: Vec<u8> = Vec::with_capacity(8192);
    loop {
        rx.clear();
        let n = socket.recv(&mut rx, 0).map_err(io_err)?;
        let mut off = 0;
        while off < n.min(rx.len()) {
            let reply =
                NetlinkBuffer::new_checked(&rx[off..]).map_err(|e| decode(e.to_string()))?;
            if reply.sequence_number() == 1 {
                match reply.message_type() {
                    NLMSG_ERROR => {
                        let err = ErrorBuffer::new_checked(reply.payload())
                            .map_err(|e| decode(e.to_string()))?;
                        return match err.code() {
                            None => Ok(()),
                            Some(code) => Err(io_err(io::Error::from_raw_os_error(-code.get()))),
                        };
                    }
                    NLMSG_DONE => return Ok(()),
                    _ => {}
                }
            }
            let len = reply.length() as usize;
            if len == 0 {
                break;
            }
            // Messages in one datagram are 4-byte aligned (NLMSG_ALIGN).
            off += (len + 3) & !3;
        }
    }
}

/// Brings the loopback interface up: what a new network namespace needs before anything
/// listens on 127.0.0.1.
pub fn loopback_up() -> Result<(), Error> {
    link_up("lo")
}
