//! Cairn's request/response protocols on libp2p streams.
//!
//! `/cairn/envelope/1`: a request is one encoded envelope, length-prefixed; the
//! response is one byte saying whether the receiver took it.
//! `/cairn/cache/1`: a length-prefixed [`CacheRequest`] and a length-prefixed
//! [`CacheResponse`], between a device and a peer cache node.
//! `/cairn/link/1`: a length-prefixed link request and answer between a new device
//! and the device whose offer it read (opaque here; the core reads them).
//!
//! Lengths are checked against each type's limit before anything is read, and buffers
//! grow with what arrives rather than with what the prefix claims.

use std::io;

use cairn_proto::{
    CacheRequest, CacheResponse, MAX_CACHE_REQUEST_BYTES, MAX_CACHE_RESPONSE_BYTES, MAX_ENVELOPE_BYTES,
    MAX_LINK_MESSAGE_BYTES,
};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

/// The envelope protocol's name.
pub const ENVELOPE_PROTOCOL: StreamProtocol = StreamProtocol::new("/cairn/envelope/1");
/// The peer cache protocol's name.
pub const CACHE_PROTOCOL: StreamProtocol = StreamProtocol::new("/cairn/cache/1");
/// The device-link protocol's name.
pub const LINK_PROTOCOL: StreamProtocol = StreamProtocol::new("/cairn/link/1");

/// What the receiver says about an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Stored or processed: the sender may drop its copy.
    Accepted,
    /// Not taken, for good (malformed, not for this device, does not decrypt):
    /// retrying it unchanged cannot help.
    Refused,
    /// Not taken now (the receiver's store failed, or it is holding too much):
    /// try again later.
    Later,
}

impl Delivery {
    /// The answer on the wire.
    pub(crate) fn to_byte(self) -> u8 {
        match self {
            Delivery::Refused => 0,
            Delivery::Accepted => 1,
            Delivery::Later => 2,
        }
    }

    /// An answer from the wire; `None` for a byte that is none.
    pub(crate) fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Delivery::Refused),
            1 => Some(Delivery::Accepted),
            2 => Some(Delivery::Later),
            _ => None,
        }
    }
}

/// Codec for [`ENVELOPE_PROTOCOL`].
#[derive(Debug, Clone, Default)]
pub struct EnvelopeCodec;

impl libp2p::request_response::Codec for EnvelopeCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Delivery;

    async fn read_request<T>(&mut self, _: &Self::Protocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, MAX_ENVELOPE_BYTES).await
    }

    async fn read_response<T>(&mut self, _: &Self::Protocol, io: &mut T) -> io::Result<Delivery>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut byte = [0u8; 1];
        io.read_exact(&mut byte).await?;
        Delivery::from_byte(byte[0]).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown delivery answer {}", byte[0]),
            )
        })
    }

    async fn write_request<T>(&mut self, _: &Self::Protocol, io: &mut T, bytes: Vec<u8>) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &bytes, MAX_ENVELOPE_BYTES).await
    }

    async fn write_response<T>(&mut self, _: &Self::Protocol, io: &mut T, delivery: Delivery) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&[delivery.to_byte()]).await?;
        io.close().await
    }
}

/// Codec for [`CACHE_PROTOCOL`].
#[derive(Debug, Clone, Default)]
pub struct CacheCodec;

fn invalid(e: cairn_proto::ProtoError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl libp2p::request_response::Codec for CacheCodec {
    type Protocol = StreamProtocol;
    type Request = CacheRequest;
    type Response = CacheResponse;

    async fn read_request<T>(&mut self, _: &Self::Protocol, io: &mut T) -> io::Result<CacheRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        CacheRequest::from_bytes(&read_frame(io, MAX_CACHE_REQUEST_BYTES).await?).map_err(invalid)
    }

    async fn read_response<T>(&mut self, _: &Self::Protocol, io: &mut T) -> io::Result<CacheResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        CacheResponse::from_bytes(&read_frame(io, MAX_CACHE_RESPONSE_BYTES).await?).map_err(invalid)
    }

    async fn write_request<T>(&mut self, _: &Self::Protocol, io: &mut T, request: CacheRequest) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &request.to_bytes(), MAX_CACHE_REQUEST_BYTES).await
    }

    async fn write_response<T>(&mut self, _: &Self::Protocol, io: &mut T, response: CacheResponse) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &response.to_bytes(), MAX_CACHE_RESPONSE_BYTES).await
    }
}

/// Codec for [`LINK_PROTOCOL`]: frames of bytes both ways.
#[derive(Debug, Clone, Default)]
pub struct LinkCodec;

impl libp2p::request_response::Codec for LinkCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &Self::Protocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, MAX_LINK_MESSAGE_BYTES).await
    }

    async fn read_response<T>(&mut self, _: &Self::Protocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, MAX_LINK_MESSAGE_BYTES).await
    }

    async fn write_request<T>(&mut self, _: &Self::Protocol, io: &mut T, bytes: Vec<u8>) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &bytes, MAX_LINK_MESSAGE_BYTES).await
    }

    async fn write_response<T>(&mut self, _: &Self::Protocol, io: &mut T, bytes: Vec<u8>) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &bytes, MAX_LINK_MESSAGE_BYTES).await
    }
}

/// Reads one `[u32 BE length][bytes]` frame of at most `limit` bytes.
async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, limit: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes is over the {limit}-byte limit"),
        ));
    }
    let mut bytes = Vec::new();
    io.take(len as u64).read_to_end(&mut bytes).await?;
    if bytes.len() != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "frame shorter than its length prefix",
        ));
    }
    Ok(bytes)
}

/// Writes one frame (refusing more than `limit` bytes) and closes the stream's write side.
async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: &[u8], limit: usize) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|&l| l as usize <= limit)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame over the limit"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}
