//! What Cairn's own protocol behaviours share: each is a request-response protocol
//! wrapped in a behaviour that keeps that protocol's state (requests waiting for their
//! answers, requests waiting to be answered) and reports only what its owner must act
//! on, as rust-libp2p's own protocols do.

/// Implements `NetworkBehaviour` for `$name` by handing connections and swarm events to
/// its `protocol` field (a `request_response::Behaviour<$codec>`). The type brings
/// `on_swarm` (it sees every swarm event first), `on_protocol_event` (what the protocol
/// reported; returns what to report on, if anything) and `poll_own` (its own work and
/// queued events, polled before the protocol each time).
macro_rules! over_request_response {
    ($name:ident, $codec:ty, $event:ty) => {
        impl libp2p::swarm::NetworkBehaviour for $name {
            type ConnectionHandler =
                <libp2p::request_response::Behaviour<$codec> as libp2p::swarm::NetworkBehaviour>::ConnectionHandler;
            type ToSwarm = $event;

            fn handle_pending_inbound_connection(
                &mut self,
                connection: libp2p::swarm::ConnectionId,
                local: &libp2p::Multiaddr,
                remote: &libp2p::Multiaddr,
            ) -> Result<(), libp2p::swarm::ConnectionDenied> {
                self.protocol
                    .handle_pending_inbound_connection(connection, local, remote)
            }

            fn handle_established_inbound_connection(
                &mut self,
                connection: libp2p::swarm::ConnectionId,
                peer: libp2p::PeerId,
                local: &libp2p::Multiaddr,
                remote: &libp2p::Multiaddr,
            ) -> Result<libp2p::swarm::THandler<Self>, libp2p::swarm::ConnectionDenied> {
                self.protocol
                    .handle_established_inbound_connection(connection, peer, local, remote)
            }

            fn handle_pending_outbound_connection(
                &mut self,
                connection: libp2p::swarm::ConnectionId,
                peer: Option<libp2p::PeerId>,
                addresses: &[libp2p::Multiaddr],
                role: libp2p::core::Endpoint,
            ) -> Result<Vec<libp2p::Multiaddr>, libp2p::swarm::ConnectionDenied> {
                self.protocol
                    .handle_pending_outbound_connection(connection, peer, addresses, role)
            }

            fn handle_established_outbound_connection(
                &mut self,
                connection: libp2p::swarm::ConnectionId,
                peer: libp2p::PeerId,
                address: &libp2p::Multiaddr,
                role: libp2p::core::Endpoint,
                port_use: libp2p::core::transport::PortUse,
            ) -> Result<libp2p::swarm::THandler<Self>, libp2p::swarm::ConnectionDenied> {
                self.protocol
                    .handle_established_outbound_connection(connection, peer, address, role, port_use)
            }

            fn on_swarm_event(&mut self, event: libp2p::swarm::FromSwarm) {
                self.on_swarm(event);
                self.protocol.on_swarm_event(event);
            }

            fn on_connection_handler_event(
                &mut self,
                peer: libp2p::PeerId,
                connection: libp2p::swarm::ConnectionId,
                event: libp2p::swarm::THandlerOutEvent<Self>,
            ) {
                self.protocol.on_connection_handler_event(peer, connection, event)
            }

            fn poll(
                &mut self,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<libp2p::swarm::ToSwarm<Self::ToSwarm, libp2p::swarm::THandlerInEvent<Self>>> {
                use libp2p::swarm::ToSwarm;
                use std::task::Poll;
                loop {
                    if let Poll::Ready(event) = self.poll_own(cx) {
                        return Poll::Ready(ToSwarm::GenerateEvent(event));
                    }
                    match self.protocol.poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(ToSwarm::GenerateEvent(event)) => {
                            if let Some(out) = self.on_protocol_event(event) {
                                return Poll::Ready(ToSwarm::GenerateEvent(out));
                            }
                        }
                        // Not an event of the protocol (those are the arm above): a
                        // request to the swarm, passed on as it is.
                        Poll::Ready(other) => {
                            return Poll::Ready(other.map_out(|_| unreachable!("events are handled above")))
                        }
                    }
                }
            }
        }
    };
}

/// Hands the answer to a request to whoever waits for it (nobody, if they gave up).
pub(super) fn answer<T>(
    pending: &mut std::collections::HashMap<
        libp2p::request_response::OutboundRequestId,
        tokio::sync::oneshot::Sender<Result<T, crate::NetError>>,
    >,
    request: libp2p::request_response::OutboundRequestId,
    outcome: Result<T, crate::NetError>,
) {
    if let Some(done) = pending.remove(&request) {
        let _ = done.send(outcome);
    }
}
