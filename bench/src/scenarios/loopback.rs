//! `loopback`: the machine's TCP ceiling, no registry involved. A listener in this process reads
//! and discards; each op opens a connection, writes `size` bytes and waits for the reader to
//! confirm how many it got.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::prng::PrngStream;

/// The listener's address and the buffer written over and over.
pub struct Loopback {
    addr: SocketAddr,
    size: u64,
    buf: Bytes,
}

impl Loopback {
    /// Starts the discarding listener on 127.0.0.1.
    pub async fn setup(size: u64) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the loopback listener")?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(discard(sock));
            }
        });
        let mut buf = vec![0u8; 1 << 20];
        PrngStream::new(1).fill(&mut buf);
        Ok(Self {
            addr,
            size,
            buf: Bytes::from(buf),
        })
    }

    /// Writes `size` bytes on a new connection; the reader answers with the count it saw.
    pub async fn op(&self) -> anyhow::Result<u64> {
        let mut sock = TcpStream::connect(self.addr)
            .await
            .context("loopback connect")?;
        let mut left = self.size;
        while left > 0 {
            let n = usize::try_from(left).map_or(self.buf.len(), |l| l.min(self.buf.len()));
            sock.write_all(&self.buf[..n])
                .await
                .context("loopback write")?;
            left -= n as u64;
        }
        sock.shutdown().await.context("loopback shutdown")?;
        let got = sock
            .read_u64()
            .await
            .context("loopback: reading the reader's count")?;
        if got != self.size {
            bail!(
                "loopback: reader saw {got} bytes, {} were written",
                self.size
            );
        }
        Ok(self.size)
    }
}

async fn discard(mut sock: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = sock.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    sock.write_u64(total).await
}
