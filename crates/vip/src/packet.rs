//! The VRRPv3 advertisement (RFC 5798 §5) for IPv4: encoding, decoding and
//! the checks a receiver makes before the state machine sees a packet.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
//! |(4)    |(4)    |       (8)     |       (8)     |    (8)        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |(rsvd) |     Max Adver Int     |          Checksum             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                       IPv4 Address(es)                        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Unlike VRRPv2, the v3 checksum covers an IPv4 pseudo-header (source,
//! destination, zero, protocol 112, VRRP length) as UDP's does. Decoding is
//! strict in the rustls manner: anything malformed is a typed error, never a
//! panic, and the error says which check failed (the agent counts drops by
//! [`DropReason`]).

use std::net::Ipv4Addr;

/// IP protocol number of VRRP.
pub const IPPROTO_VRRP: u8 = 112;
/// The IPv4 multicast group of VRRP.
pub const MULTICAST_GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// TTL every VRRP packet is sent with and must arrive with (RFC 5798 §5.1.1.3).
pub const TTL: u8 = 255;
/// VRRP version this codec speaks.
pub const VERSION: u8 = 3;
/// The only VRRP packet type: ADVERTISEMENT.
pub const TYPE_ADVERTISEMENT: u8 = 1;
/// Length of the fixed part of the VRRP header.
pub const HEADER_LEN: usize = 8;
/// Largest advertisement interval the 12-bit field holds (centiseconds).
pub const MAX_ADVER_INT: u16 = 0x0fff;
/// Most addresses one advertisement can carry (the count is one byte).
pub const MAX_ADDRESSES: usize = 255;
/// Largest VRRP message we build or accept.
pub const MAX_LEN: usize = HEADER_LEN + 4 * MAX_ADDRESSES;

/// One VRRPv3 advertisement for IPv4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    /// Virtual router id, 1–255.
    pub vrid: u8,
    /// Sender's priority: 0 = the master is leaving, 255 = address owner.
    pub priority: u8,
    /// Advertisement interval in centiseconds (12 bits, 1–4095).
    pub max_adver_int: u16,
    /// The virtual addresses of this router.
    pub addresses: Vec<Ipv4Addr>,
}

/// Why a packet was not given to the state machine. Each variant is one
/// label of the `vip_adverts_dropped_total{reason}` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    /// Shorter than the headers it claims to have, or lengths disagree.
    #[error("truncated or inconsistent length")]
    Malformed,
    /// The IPv4 header is not one of ours (version, protocol, fragment).
    #[error("not a VRRP-over-IPv4 packet")]
    NotVrrp,
    /// TTL other than 255: the packet crossed a router (RFC 5798 §7.1).
    #[error("TTL is not 255")]
    Ttl,
    /// VRRP version other than 3 (e.g. keepalived left at its v2 default).
    #[error("VRRP version is not 3")]
    Version,
    /// Packet type other than ADVERTISEMENT.
    #[error("VRRP type is not ADVERTISEMENT")]
    Type,
    /// The checksum does not match.
    #[error("bad checksum")]
    Checksum,
    /// Address count of zero, or not matching the packet length.
    #[error("address count does not match the packet")]
    AddressCount,
    /// An interval of zero, which would make the down timer zero.
    #[error("advertisement interval is zero")]
    Interval,
    /// Another virtual router's packet.
    #[error("virtual router id is not ours")]
    Vrid,
    /// Sent by this node (looped back).
    #[error("sent by this node")]
    Own,
    /// Unicast mode: the sender is not one of the configured peers.
    #[error("sender is not a configured peer")]
    NotPeer,
}

impl DropReason {
    /// Every reason, for pre-registering metric labels.
    pub const ALL: [DropReason; 11] = [
        DropReason::Malformed,
        DropReason::NotVrrp,
        DropReason::Ttl,
        DropReason::Version,
        DropReason::Type,
        DropReason::Checksum,
        DropReason::AddressCount,
        DropReason::Interval,
        DropReason::Vrid,
        DropReason::Own,
        DropReason::NotPeer,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NotVrrp => "not_vrrp",
            DropReason::Ttl => "ttl",
            DropReason::Version => "version",
            DropReason::Type => "type",
            DropReason::Checksum => "checksum",
            DropReason::AddressCount => "address_count",
            DropReason::Interval => "interval",
            DropReason::Vrid => "vrid",
            DropReason::Own => "own",
            DropReason::NotPeer => "not_peer",
        }
    }
}

/// An advertisement that could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// VRID 0 is reserved.
    #[error("virtual router id 0 is invalid (use 1-255)")]
    Vrid,
    /// Interval outside 1–4095 centiseconds.
    #[error("advertisement interval {0} cs is outside 1-4095")]
    Interval(u16),
    /// No addresses, or more than 255.
    #[error("{0} virtual addresses: an advertisement carries 1-255")]
    AddressCount(usize),
}

impl Advert {
    /// Encodes the advertisement with the checksum for a packet from `src`
    /// to `dst` (the pseudo-header rule of VRRPv3).
    pub fn encode(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Result<Vec<u8>, EncodeError> {
        if self.vrid == 0 {
            return Err(EncodeError::Vrid);
        }
        if self.max_adver_int == 0 || self.max_adver_int > MAX_ADVER_INT {
            return Err(EncodeError::Interval(self.max_adver_int));
        }
        if self.addresses.is_empty() || self.addresses.len() > MAX_ADDRESSES {
            return Err(EncodeError::AddressCount(self.addresses.len()));
        }
        let mut out = Vec::with_capacity(HEADER_LEN + 4 * self.addresses.len());
        out.push((VERSION << 4) | TYPE_ADVERTISEMENT);
        out.push(self.vrid);
        out.push(self.priority);
        out.push(self.addresses.len() as u8);
        out.extend_from_slice(&(self.max_adver_int & MAX_ADVER_INT).to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        for a in &self.addresses {
            out.extend_from_slice(&a.octets());
        }
        let sum = checksum(src, dst, &out);
        out[6..8].copy_from_slice(&sum.to_be_bytes());
        Ok(out)
    }

    /// Decodes a VRRP message (the IP payload) received from `src` for
    /// `dst`, checking version, type, lengths, interval and checksum.
    ///
    /// keepalived before 2.2.0 computed the unicast checksum with the
    /// multicast group as destination (its `old_unicast_checksum`); such a
    /// packet is accepted too, so mixed-version groups keep working.
    pub fn decode(vrrp: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> Result<Advert, DropReason> {
        if vrrp.len() < HEADER_LEN || vrrp.len() > MAX_LEN {
            return Err(DropReason::Malformed);
        }
        if vrrp[0] >> 4 != VERSION {
            return Err(DropReason::Version);
        }
        if vrrp[0] & 0x0f != TYPE_ADVERTISEMENT {
            return Err(DropReason::Type);
        }
        let count = usize::from(vrrp[3]);
        if count == 0 || vrrp.len() != HEADER_LEN + 4 * count {
            return Err(DropReason::AddressCount);
        }
        if checksum(src, dst, vrrp) != 0
            && (dst == MULTICAST_GROUP || checksum(src, MULTICAST_GROUP, vrrp) != 0)
        {
            return Err(DropReason::Checksum);
        }
        let max_adver_int = u16::from_be_bytes([vrrp[4], vrrp[5]]) & MAX_ADVER_INT;
        if max_adver_int == 0 {
            return Err(DropReason::Interval);
        }
        let addresses = vrrp[HEADER_LEN..]
            .chunks_exact(4)
            .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
            .collect();
        Ok(Advert {
            vrid: vrrp[1],
            priority: vrrp[2],
            max_adver_int,
            addresses,
        })
    }
}

/// The fields of an IPv4 header a VRRP receiver looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Header {
    /// Sender.
    pub src: Ipv4Addr,
    /// Destination (the group, or us in unicast mode).
    pub dst: Ipv4Addr,
    /// Time to live on arrival.
    pub ttl: u8,
    /// Header length in bytes.
    pub header_len: usize,
    /// Total length from the header.
    pub total_len: usize,
}

/// Parses the IPv4 header a raw socket hands over with each packet and
/// returns it with the VRRP payload.
pub fn parse_ipv4(buf: &[u8]) -> Result<(Ipv4Header, &[u8]), DropReason> {
    if buf.len() < 20 {
        return Err(DropReason::Malformed);
    }
    if buf[0] >> 4 != 4 {
        return Err(DropReason::NotVrrp);
    }
    let header_len = usize::from(buf[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    if header_len < 20 || total_len < header_len || total_len > buf.len() {
        return Err(DropReason::Malformed);
    }
    // A fragment (more-fragments flag or an offset) is not a whole advert.
    if u16::from_be_bytes([buf[6], buf[7]]) & 0x3fff != 0 {
        return Err(DropReason::NotVrrp);
    }
    if buf[9] != IPPROTO_VRRP {
        return Err(DropReason::NotVrrp);
    }
    let header = Ipv4Header {
        src: Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]),
        dst: Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]),
        ttl: buf[8],
        header_len,
        total_len,
    };
    Ok((header, &buf[header_len..total_len]))
}

/// A packet that passed every check of a receiver of virtual router `vrid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The sender's (primary) address, used for tie-breaks.
    pub src: Ipv4Addr,
    /// The advertisement.
    pub advert: Advert,
}

/// Runs all receiver checks on a raw IPv4 packet, in RFC 5798 §7.1 order:
/// TTL, version/type/length, checksum, VRID.
pub fn receive(buf: &[u8], vrid: u8) -> Result<Received, DropReason> {
    let (ip, payload) = parse_ipv4(buf)?;
    if ip.ttl != TTL {
        return Err(DropReason::Ttl);
    }
    let advert = Advert::decode(payload, ip.src, ip.dst)?;
    if advert.vrid != vrid {
        return Err(DropReason::Vrid);
    }
    Ok(Received {
        src: ip.src,
        advert,
    })
}

/// The Internet checksum over the IPv4 pseudo-header and `vrrp`. Returns 0
/// for a message whose checksum field is correct; on a message with a zero
/// checksum field it returns the value to put there.
pub fn checksum(src: Ipv4Addr, dst: Ipv4Addr, vrrp: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        let mut chunks = bytes.chunks_exact(2);
        for c in &mut chunks {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u32::from(*last) << 8;
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&[0, IPPROTO_VRRP]);
    // The length is bounded by MAX_LEN, so it fits in 16 bits.
    add(&(vrrp.len() as u16).to_be_bytes());
    add(vrrp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Builds a whole IPv4 packet around a VRRP message, as the kernel would
/// send it: for tests and the bad-input injector.
pub fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, vrrp: &[u8]) -> Vec<u8> {
    let total = (20 + vrrp.len()) as u16;
    let mut out = Vec::with_capacity(usize::from(total));
    out.extend_from_slice(&[0x45, 0xc0]);
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0x40, 0]); // id 0, don't fragment
    out.extend_from_slice(&[ttl, IPPROTO_VRRP, 0, 0]);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
    let mut sum: u32 = out
        .chunks_exact(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    out[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    out.extend_from_slice(vrrp);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

    fn advert() -> Advert {
        Advert {
            vrid: 51,
            priority: 150,
            max_adver_int: 100,
            addresses: vec![Ipv4Addr::new(10, 77, 0, 100)],
        }
    }

    /// VRID 51, priority 150, advert 100 cs, VIP 10.77.0.100, sent from
    /// 10.77.0.1 to 224.0.0.18; checksum worked out on paper (one's
    /// complement sum of pseudo-header and message = 0xbd26).
    #[test]
    fn matches_a_hand_computed_packet() {
        let bytes = advert().encode(SRC, MULTICAST_GROUP).unwrap();
        assert_eq!(&bytes[..8], &[0x31, 51, 150, 1, 0, 100, 0x42, 0xd9]);
        assert_eq!(&bytes[8..], &[10, 77, 0, 100]);
        // Recompute by hand: the sum over the whole thing folds to 0xffff.
        assert_eq!(checksum(SRC, MULTICAST_GROUP, &bytes), 0);
        let decoded = Advert::decode(&bytes, SRC, MULTICAST_GROUP).unwrap();
        assert_eq!(decoded, advert());
    }

    #[test]
    fn rejects_each_broken_field() {
        let good = advert().encode(SRC, MULTICAST_GROUP).unwrap();
        let decode = |b: &[u8]| Advert::decode(b, SRC, MULTICAST_GROUP);

        let mut b = good.clone();
        b[0] = 0x21; // VRRPv2
        assert_eq!(decode(&b), Err(DropReason::Version));
        let mut b = good.clone();
        b[0] = 0x32;
        assert_eq!(decode(&b), Err(DropReason::Type));
        let mut b = good.clone();
        b[3] = 2;
        assert_eq!(decode(&b), Err(DropReason::AddressCount));
        let mut b = good.clone();
        b[3] = 0;
        assert_eq!(decode(&b), Err(DropReason::AddressCount));
        let mut b = good.clone();
        b[9] ^= 1;
        assert_eq!(decode(&b), Err(DropReason::Checksum));
        assert_eq!(decode(&good[..7]), Err(DropReason::Malformed));
        assert_eq!(
            Advert::decode(&good, Ipv4Addr::new(10, 77, 0, 2), MULTICAST_GROUP),
            Err(DropReason::Checksum),
            "the pseudo-header covers the source address"
        );
        let zero = Advert {
            max_adver_int: 0,
            ..advert()
        };
        assert_eq!(
            zero.encode(SRC, MULTICAST_GROUP),
            Err(EncodeError::Interval(0))
        );
    }

    #[test]
    fn unicast_checksum_accepts_the_old_keepalived_form() {
        let peer = Ipv4Addr::new(10, 77, 0, 2);
        let new = advert().encode(SRC, peer).unwrap();
        let old = advert().encode(SRC, MULTICAST_GROUP).unwrap();
        assert!(Advert::decode(&new, SRC, peer).is_ok());
        assert!(Advert::decode(&old, SRC, peer).is_ok());
        // A multicast packet must carry the multicast checksum.
        assert_eq!(
            Advert::decode(&new, SRC, MULTICAST_GROUP),
            Err(DropReason::Checksum)
        );
    }

    #[test]
    fn receiver_checks_ttl_and_vrid() {
        let vrrp = advert().encode(SRC, MULTICAST_GROUP).unwrap();
        let ok = ipv4_packet(SRC, MULTICAST_GROUP, 255, &vrrp);
        assert_eq!(receive(&ok, 51).unwrap().advert, advert());
        assert_eq!(receive(&ok, 52), Err(DropReason::Vrid));
        let hop = ipv4_packet(SRC, MULTICAST_GROUP, 254, &vrrp);
        assert_eq!(receive(&hop, 51), Err(DropReason::Ttl));
        let mut udp = ok.clone();
        udp[9] = 17;
        assert_eq!(receive(&udp, 51), Err(DropReason::NotVrrp));
        let mut frag = ok.clone();
        frag[6] = 0x20;
        assert_eq!(receive(&frag, 51), Err(DropReason::NotVrrp));
        let mut long = ok.clone();
        long[3] += 4;
        assert_eq!(receive(&long, 51), Err(DropReason::Malformed));
        assert_eq!(receive(&[], 51), Err(DropReason::Malformed));
    }

    fn arb_advert() -> impl Strategy<Value = Advert> {
        (
            1u8..=255,
            any::<u8>(),
            1u16..=MAX_ADVER_INT,
            prop::collection::vec(any::<[u8; 4]>().prop_map(Ipv4Addr::from), 1..20),
        )
            .prop_map(|(vrid, priority, max_adver_int, addresses)| Advert {
                vrid,
                priority,
                max_adver_int,
                addresses,
            })
    }

    proptest! {
        #[test]
        fn round_trips(a in arb_advert(), src in any::<[u8; 4]>(), dst in any::<[u8; 4]>()) {
            let (src, dst) = (Ipv4Addr::from(src), Ipv4Addr::from(dst));
            let bytes = a.encode(src, dst).unwrap();
            prop_assert_eq!(checksum(src, dst, &bytes), 0);
            prop_assert_eq!(Advert::decode(&bytes, src, dst), Ok(a.clone()));
            let packet = ipv4_packet(src, dst, TTL, &bytes);
            let got = receive(&packet, a.vrid).unwrap();
            prop_assert_eq!(got.advert, a);
            prop_assert_eq!(got.src, src);
        }

        /// Any single bit flip is caught (by the checksum or a field check).
        #[test]
        fn detects_any_bit_flip(a in arb_advert(), bit in any::<prop::sample::Index>()) {
            let bytes = a.encode(SRC, MULTICAST_GROUP).unwrap();
            let bit = bit.index(bytes.len() * 8);
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            // Flipping a reserved bit of the interval word is caught by the
            // checksum too; nothing flipped may decode to a valid advert.
            prop_assert!(Advert::decode(&bad, SRC, MULTICAST_GROUP).is_err());
        }

        /// Fuzz-style: arbitrary bytes never panic the decoder, and whatever
        /// it accepts re-encodes to the very same bytes.
        #[test]
        fn arbitrary_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..1200), vrid in any::<u8>()) {
            let _ = receive(&buf, vrid);
            if let Ok((ip, payload)) = parse_ipv4(&buf) {
                if let Ok(a) = Advert::decode(payload, ip.src, ip.dst) {
                    prop_assert!(a.max_adver_int >= 1 && !a.addresses.is_empty());
                    let re = a.encode(ip.src, ip.dst);
                    if let Ok(re) = re {
                        // The reserved bits are not kept; the rest is.
                        prop_assert_eq!(&re[1..4], &payload[1..4]);
                        prop_assert_eq!(&re[8..], &payload[8..]);
                    }
                }
            }
        }

        /// Arbitrary bytes behind a valid IP header, with a valid checksum
        /// patched in, still never panic and are judged consistently.
        #[test]
        fn fuzzed_payload_with_fixed_checksum(mut body in prop::collection::vec(any::<u8>(), 8..64)) {
            body[6] = 0;
            body[7] = 0;
            let sum = checksum(SRC, MULTICAST_GROUP, &body);
            body[6..8].copy_from_slice(&sum.to_be_bytes());
            match Advert::decode(&body, SRC, MULTICAST_GROUP) {
                Ok(a) => {
                    prop_assert_eq!(body[0], 0x31);
                    prop_assert_eq!(body.len(), HEADER_LEN + 4 * a.addresses.len());
                }
                Err(DropReason::Checksum) => prop_assert!(false, "checksum was patched in"),
                Err(_) => {}
            }
        }
    }
}
