//! The thin I/O layer under the agent: the raw IP socket VRRP travels on,
//! virtual address add/remove through rtnetlink, gratuitous ARP through an
//! `AF_PACKET` socket, and the interface facts the agent needs (index, MAC,
//! primary address, link state).
//!
//! The system calls are made directly through `libc` (netlink messages are
//! a few fixed structs; a netlink crate would add a dozen dependencies for
//! two requests). Every `unsafe` block says why it is sound.

use std::ffi::CString;
use std::io::{self, Read};
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;

use crate::config::VirtualIp;
use crate::packet;

/// Facts about a network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Name, e.g. `eth0`.
    pub name: String,
    /// Kernel index.
    pub index: u32,
    /// Hardware address (source of gratuitous ARP).
    pub mac: [u8; 6],
}

impl Interface {
    /// Looks up interface `name`.
    pub fn lookup(name: &str) -> io::Result<Interface> {
        let c = CString::new(name)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"))?;
        // SAFETY: `c` is a valid NUL-terminated string for the call's duration.
        let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if index == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no interface named {name:?}"),
            ));
        }
        let mut req = ifreq(name)?;
        ioctl(libc::SIOCGIFHWADDR, &mut req)?;
        // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
        let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
        let mut mac = [0u8; 6];
        for (m, b) in mac.iter_mut().zip(hw.sa_data.iter()) {
            *m = *b as u8;
        }
        Ok(Interface {
            name: name.to_string(),
            index,
            mac,
        })
    }
}

/// Whether interface `name` is administratively up and has carrier.
pub fn link_up(name: &str) -> bool {
    let Ok(mut req) = ifreq(name) else {
        return false;
    };
    if ioctl(libc::SIOCGIFFLAGS, &mut req).is_err() {
        return false;
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = i32::from(unsafe { req.ifr_ifru.ifru_flags });
    flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0
}

/// The IPv4 addresses on interface `name`, in the kernel's order (the
/// primary one first).
pub fn ipv4_addresses(name: &str) -> io::Result<Vec<Ipv4Addr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, alive
        // until freeifaddrs; its name is a NUL-terminated string and its
        // address, when non-null and AF_INET, is a sockaddr_in.
        unsafe {
            let ifa = &*cur;
            if !ifa.ifa_addr.is_null()
                && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET
                && std::ffi::CStr::from_ptr(ifa.ifa_name).to_bytes() == name.as_bytes()
            {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                out.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
            cur = ifa.ifa_next;
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} is not 1-15 bytes"),
        ));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(req)
}

fn ioctl(request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    // SAFETY: both requests read the name and write the union of `req`,
    // which outlives the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request as _, req as *mut libc::ifreq) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The raw IP protocol-112 sockets of one VRRP instance.
///
/// Two sockets: one bound to the interface and the multicast group that
/// receives, and one bound to the primary address that sends (a raw socket
/// bound to an address only receives packets for that address, which
/// would hide the multicast ones). Both send and receive with TTL 255.
pub struct VrrpSocket {
    rx: AsyncFd<Socket>,
    tx: Socket,
}

impl VrrpSocket {
    /// Opens the sockets on `iface`, sending from `primary`; joins
    /// 224.0.0.18 unless `unicast`.
    pub fn open(iface: &Interface, primary: Ipv4Addr, unicast: bool) -> io::Result<VrrpSocket> {
        let proto = Protocol::from(i32::from(packet::IPPROTO_VRRP));
        let rx = Socket::new(Domain::IPV4, Type::RAW, Some(proto))?;
        rx.bind_device(Some(iface.name.as_bytes()))?;
        rx.set_nonblocking(true)?;
        rx.set_recv_buffer_size(256 * 1024)?;
        if !unicast {
            rx.join_multicast_v4_n(
                &packet::MULTICAST_GROUP,
                &socket2::InterfaceIndexOrAddress::Index(iface.index),
            )?;
        }
        let tx = Socket::new(Domain::IPV4, Type::RAW, Some(proto))?;
        tx.bind_device(Some(iface.name.as_bytes()))?;
        tx.bind(&SockAddr::from(SocketAddrV4::new(primary, 0)))?;
        tx.set_ttl_v4(u32::from(packet::TTL))?;
        tx.set_multicast_ttl_v4(u32::from(packet::TTL))?;
        tx.set_multicast_loop_v4(false)?;
        tx.set_multicast_if_v4(&primary)?;
        tx.set_nonblocking(true)?;
        // It must not hold a copy of every unicast packet sent to us.
        tx.set_recv_buffer_size(0)?;
        // SAFETY: the Socket owns its descriptor, which stays open and the
        // same until the AsyncFd (which owns the Socket) is dropped.
        let rx = unsafe { AsyncFd::register_with_interest(rx, tokio::io::Interest::READABLE) }?;
        Ok(VrrpSocket { rx, tx })
    }

    /// Receives one raw IPv4 packet into `buf`; returns its length.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.rx.readable().await?;
            match guard.try_io(|s| s.get_ref().read(buf)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends one VRRP message to `dst`.
    pub fn send(&self, vrrp: &[u8], dst: Ipv4Addr) -> io::Result<()> {
        self.tx
            .send_to(vrrp, &SockAddr::from(SocketAddrV4::new(dst, 0)))?;
        Ok(())
    }
}

/// An rtnetlink socket for adding and removing addresses.
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_LABEL: u16 = 3;

impl Netlink {
    /// Opens the socket (replies time out after a second).
    pub fn open() -> io::Result<Netlink> {
        // SAFETY: plain socket(2) call; the descriptor is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let sock = socket2::SockRef::from(&fd);
        sock.set_read_timeout(Some(Duration::from_secs(1)))?;
        Ok(Netlink { fd, seq: 1 })
    }

    /// Adds `vip` to interface `index`. Already present is not an error.
    pub fn add(&mut self, index: u32, vip: &VirtualIp) -> io::Result<()> {
        match self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, index, vip, true) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r,
        }
    }

    /// Removes `vip` from interface `index`. Absent is not an error.
    pub fn remove(&mut self, index: u32, vip: &VirtualIp) -> io::Result<()> {
        match self.request(RTM_DELADDR, 0, index, vip, false) {
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EADDRNOTAVAIL) | Some(libc::ENOENT) | Some(libc::ESRCH)
                ) =>
            {
                Ok(())
            }
            r => r,
        }
    }

    fn request(
        &mut self,
        kind: u16,
        flags: u16,
        index: u32,
        vip: &VirtualIp,
        with_label: bool,
    ) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut msg = Vec::with_capacity(64);
        msg.extend_from_slice(&0u32.to_ne_bytes()); // length, patched below
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | flags).to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        // struct ifaddrmsg
        msg.extend_from_slice(&[libc::AF_INET as u8, vip.prefix, 0, 0]);
        msg.extend_from_slice(&index.to_ne_bytes());
        attr(&mut msg, IFA_LOCAL, &vip.addr.octets());
        if kind == RTM_NEWADDR {
            attr(&mut msg, IFA_ADDRESS, &vip.addr.octets());
        }
        if with_label {
            if let Some(label) = &vip.label {
                let mut l = label.as_bytes().to_vec();
                l.push(0);
                attr(&mut msg, IFA_LABEL, &l);
            }
        }
        let len = msg.len() as u32;
        msg[..4].copy_from_slice(&len.to_ne_bytes());

        // SAFETY: sockaddr_nl is plain old data; zero = the kernel (pid 0).
        let mut to: libc::sockaddr_nl = unsafe { zeroed() };
        to.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `msg` and `to` are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&to as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        // Read until the ack for our sequence number (bounded).
        let mut buf = [0u8; 8192];
        for _ in 0..16 {
            // SAFETY: `buf` is valid for writes of its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= 16 {
                let mlen = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let mtype = u16::from_ne_bytes([rest[4], rest[5]]);
                let mseq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
                if mlen < 16 || mlen > rest.len() {
                    break;
                }
                if mtype == NLMSG_ERROR && mseq == seq && mlen >= 20 {
                    let code = i32::from_ne_bytes([rest[16], rest[17], rest[18], rest[19]]);
                    return if code == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::from_raw_os_error(-code))
                    };
                }
                rest = &rest[(mlen + 3) & !3..];
            }
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no netlink acknowledgement",
        ))
    }
}

fn attr(msg: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = (4 + data.len()) as u16;
    msg.extend_from_slice(&len.to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(data);
    while msg.len() % 4 != 0 {
        msg.push(0);
    }
}

/// Wakes up when any link in the namespace changes (rtnetlink's
/// `RTMGRP_LINK` group), so link loss is seen at once without polling.
pub struct LinkEvents {
    fd: AsyncFd<OwnedFd>,
}

impl LinkEvents {
    /// Subscribes to link notifications.
    pub fn open() -> io::Result<LinkEvents> {
        // SAFETY: plain socket(2) call; the descriptor is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain old data; all-zero is valid.
        let mut addr: libc::sockaddr_nl = unsafe { zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = libc::RTMGRP_LINK as u32;
        // SAFETY: `addr` is a valid sockaddr_nl for the length given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the OwnedFd stays open and the same while the AsyncFd
        // (which owns it) lives.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?;
        Ok(LinkEvents { fd })
    }

    /// Waits for the next batch of link notifications (their content does
    /// not matter: the caller re-reads the link state).
    pub async fn next(&self) -> io::Result<()> {
        let mut buf = [0u8; 8192];
        loop {
            let mut guard = self.fd.readable().await?;
            let mut got = false;
            // Drain what is queued; an overrun (ENOBUFS) is also a change.
            for _ in 0..64 {
                // SAFETY: `buf` is valid for writes of its length.
                let n = unsafe {
                    libc::recv(
                        self.fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if n >= 0 {
                    got = true;
                    continue;
                }
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    Some(libc::ENOBUFS) => got = true,
                    _ => return Err(e),
                }
            }
            guard.clear_ready();
            if got {
                return Ok(());
            }
        }
    }
}

/// Sends gratuitous ARP (RFC 5227 announcements) on one interface.
pub struct Arp {
    fd: OwnedFd,
}

impl Arp {
    /// Opens an `AF_PACKET` socket that sends only (protocol 0 receives
    /// nothing).
    pub fn open() -> io::Result<Arp> {
        // SAFETY: plain socket(2) call; the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(Arp {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Announces that `ip` is at `iface`'s MAC.
    pub fn announce(&self, iface: &Interface, ip: Ipv4Addr) -> io::Result<()> {
        let frame = garp_frame(iface.mac, ip);
        // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
        let mut to: libc::sockaddr_ll = unsafe { zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
        to.sll_ifindex = iface.index as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        // SAFETY: `frame` and `to` are valid for the lengths given.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
                (&to as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A broadcast ARP request for `ip` from `ip` at `mac` (a gratuitous ARP, as
/// keepalived sends), padded to the Ethernet minimum.
pub fn garp_frame(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06]); // ARP
    f.extend_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]); // Ethernet/IPv4, request
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&ip.octets());
    f.resize(60, 0);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garp_frame_layout() {
        let f = garp_frame([2, 0, 0, 0, 0, 1], Ipv4Addr::new(10, 0, 0, 9));
        assert_eq!(f.len(), 60);
        assert_eq!(&f[12..14], &[8, 6]);
        assert_eq!(&f[20..22], &[0, 1], "request");
        assert_eq!(&f[28..32], &[10, 0, 0, 9], "sender ip");
        assert_eq!(&f[38..42], &[10, 0, 0, 9], "target ip");
    }

    #[test]
    fn loopback_facts() {
        let lo = Interface::lookup("lo").unwrap();
        assert!(lo.index > 0);
        assert_eq!(lo.mac, [0; 6]);
        assert!(link_up("lo"));
        assert!(ipv4_addresses("lo").unwrap().contains(&Ipv4Addr::LOCALHOST));
        assert!(Interface::lookup("nonexistent0").is_err());
        assert!(!link_up("nonexistent0"));
    }
}
