//! The `/cairn/envelope/1` request/response protocol: a request is one encoded
//! envelope, length-prefixed; the response is one byte saying whether the receiver
//! took it. Lengths are checked before any buffer is allocated.

use std::io;

use cairn_proto::MAX_ENVELOPE_BYTES;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

/// The protocol name.
pub const ENVELOPE_PROTOCOL: StreamProtocol = StreamProtocol::new("/cairn/envelope/1");

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
        let mut len = [0u8; 4];
        io.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_ENVELOPE_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("envelope of {len} bytes is over the limit"),
            ));
        }
        // Grow with what actually arrives rather than trusting the prefix up front.
        let mut bytes = Vec::new();
        io.take(len as u64).read_to_end(&mut bytes).await?;
        if bytes.len() != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "envelope shorter than its length prefix",
            ));
        }
        Ok(bytes)
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
        let len = u32::try_from(bytes.len())
            .ok()
            .filter(|&l| l as usize <= MAX_ENVELOPE_BYTES)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "envelope over the limit"))?;
        io.write_all(&len.to_be_bytes()).await?;
        io.write_all(&bytes).await?;
        io.close().await
    }

    async fn write_response<T>(&mut self, _: &Self::Protocol, io: &mut T, delivery: Delivery) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&[delivery.to_byte()]).await?;
        io.close().await
    }
}
