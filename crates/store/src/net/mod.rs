//! The network layer: identities ([`identity`]), framing ([`wire`]) and the
//! QUIC transport with mutual TLS ([`transport`]). Nothing here knows what
//! the messages mean; `cluster::rpc` gives them types.

pub mod identity;
pub mod transport;
pub mod wire;

pub use identity::Identity;
pub use transport::{NetError, Peer, Service, Transport};

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn echo() -> Service {
        Arc::new(|peer: Peer, frame: wire::Frame| {
            Box::pin(async move {
                let header = format!("auth={}", peer.authenticated).into_bytes();
                (header, frame.body)
            })
        })
    }

    fn node(
        dir: &std::path::Path,
    ) -> (
        Identity,
        Arc<Transport>,
        b3_common::shutdown::ShutdownTrigger,
    ) {
        let id = Identity::load(dir).unwrap().unwrap();
        let t = Transport::bind(
            "127.0.0.1:0".parse().unwrap(),
            id.server_config().unwrap(),
            id.client_config().unwrap(),
        )
        .unwrap();
        let (trigger, shutdown) = b3_common::shutdown::channel();
        tokio::spawn(t.clone().serve(echo(), shutdown));
        (id, t, trigger)
    }

    #[tokio::test]
    async fn mutual_tls_accepts_members_and_refuses_strangers() {
        let d1 = tempfile::tempdir().unwrap();
        let first = Identity::init(d1.path(), 3, 2).unwrap();
        let (_, server, _t1) = node(d1.path());
        let addr = server.local_addr().unwrap();
        let timeout = Duration::from_secs(5);

        // A member (cert from the same CA) is served and authenticated.
        let token = first.join_token(Duration::from_secs(60)).unwrap();
        let pending = identity::PendingJoin::new().unwrap();
        let grant = first
            .grant(&token, pending.node_id, &pending.csr_pem)
            .unwrap();
        let member = Identity::from_grant(grant, pending, &token).unwrap();
        let client = Transport::client(member.client_config().unwrap()).unwrap();
        let body = vec![5u8; 3 << 20];
        let resp = client.call(addr, b"hi", &body, timeout).await.unwrap();
        assert_eq!(resp.header, b"auth=true");
        assert_eq!(resp.body.len(), body.len());
        // The connection is reused and its path MTU known.
        assert!(client.path_mtu(addr).is_some_and(|m| m >= 1200));

        // A node of another cluster fails the handshake.
        let d2 = tempfile::tempdir().unwrap();
        let stranger = Identity::init(d2.path(), 3, 2).unwrap();
        let client = Transport::client(stranger.client_config().unwrap()).unwrap();
        let err = client.call(addr, b"hi", b"", timeout).await.unwrap_err();
        assert!(matches!(err, NetError::Connect { .. }), "{err}");

        // A joiner without a certificate gets through, unauthenticated.
        let joiner = Transport::client(identity::join_client_config(&token).unwrap()).unwrap();
        let resp = joiner.call(addr, b"join", b"", timeout).await.unwrap();
        assert_eq!(resp.header, b"auth=false");

        // A joiner pinning another CA refuses our server.
        let other_token = stranger.join_token(Duration::from_secs(60)).unwrap();
        let joiner =
            Transport::client(identity::join_client_config(&other_token).unwrap()).unwrap();
        let err = joiner.call(addr, b"join", b"", timeout).await.unwrap_err();
        assert!(err.to_string().contains("CA does not match"), "{err}");
    }

    #[tokio::test]
    async fn path_mtu_grows_past_ethernet_size_on_loopback() {
        let d1 = tempfile::tempdir().unwrap();
        let id = Identity::init(d1.path(), 3, 2).unwrap();
        let (_, server, _t1) = node(d1.path());
        let addr = server.local_addr().unwrap();
        let client = Transport::client(id.client_config().unwrap()).unwrap();
        let timeout = Duration::from_secs(5);
        // Discovery probes ride along with traffic; give it a few rounds.
        let body = vec![1u8; 256 << 10];
        let mut mtu = 0;
        for _ in 0..50 {
            let resp = client.call(addr, b"x", &body, timeout).await.unwrap();
            assert_eq!(resp.body.len(), body.len());
            mtu = client.path_mtu(addr).unwrap_or(0);
            if mtu > 1500 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Loopback's MTU is 64 KiB; quinn's default would stop at 1452.
        assert!(mtu > 1500, "path MTU stayed at {mtu} on loopback");
        // Bulk transfers (sent in segmentation-offload batches) keep it:
        // batches over 64 KiB would be dropped, declared a black hole and
        // the MTU reset to 1200.
        let big = vec![2u8; 4 << 20];
        for _ in 0..3 {
            let resp = client.call(addr, b"x", &big, timeout).await.unwrap();
            assert_eq!(resp.body.len(), big.len());
        }
        let after = client.path_mtu(addr).unwrap_or(0);
        assert!(
            after > 1500,
            "path MTU fell from {mtu} to {after} under bulk traffic"
        );
    }

    #[tokio::test]
    async fn dead_peer_is_a_timeout_naming_it() {
        let d1 = tempfile::tempdir().unwrap();
        let id = Identity::init(d1.path(), 3, 2).unwrap();
        let client = Transport::client(id.client_config().unwrap()).unwrap();
        // Nothing listens there.
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        drop(sock);
        let err = client
            .call(addr, b"x", b"", Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
