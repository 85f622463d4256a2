//! The server side of a SPDY/3.1 connection: accepts the client's streams, carries their
//! data both ways, and does the flow control.
//!
//! One task reads frames, one writes them (in the order they were queued, so a stream's
//! SYN_REPLY precedes its data and its data precedes its FIN). Flow control (§2.6.8):
//! - Inbound, every stream may buffer one window (64 KiB) of unread data; WINDOW_UPDATEs
//!   go out as the application reads (per stream) and as data arrives (the connection's
//!   window, since per-stream windows already bound what is buffered). A peer that sends
//!   more than its window is slowed down by TCP instead: the reader waits.
//! - Outbound, send windows are counted from the start, but waited on only once the peer
//!   has shown that it does flow control (a WINDOW_UPDATE or an initial window SETTING).
//!   moby/spdystream, which client-go and kubelet use, never sends WINDOW_UPDATE and never
//!   checks windows; waiting for updates it never sends would stall every output over
//!   64 KiB, so for it TCP is the only backpressure, as with kubelet's own server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};

use super::spdy::{self, Frame, FrameDecoder, FrameEncoder, Headers};

/// Largest data frame we send: what Go's io.Copy moves at once.
pub const MAX_DATA_FRAME: usize = 32 * 1024;
/// How long `close` waits for the peer to close its side after our GOAWAY.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Frames queued for the writer before senders wait.
const OUT_QUEUE: usize = 64;

enum Out {
    Frame(Frame),
    /// Flush, shut down the write side, then say so.
    Shutdown(oneshot::Sender<()>),
}

struct StreamState {
    /// Our send window; may go negative when the peer shrinks the initial window.
    send_window: i64,
    /// Where the reader delivers this stream's data; None after the peer's FIN.
    inbound: Option<mpsc::UnboundedSender<Bytes>>,
    /// Unread inbound bytes the stream may still buffer (its receive window).
    credit: Arc<Semaphore>,
    /// Read but not yet acknowledged with a WINDOW_UPDATE.
    unacked: u32,
    /// We sent FIN or RST, or the stream is unidirectional: nothing more goes out.
    local_done: bool,
    reset: bool,
}

struct State {
    streams: HashMap<u32, StreamState>,
    conn_window: i64,
    initial_window: i64,
    /// The peer sent a WINDOW_UPDATE or a window SETTING: it keeps windows.
    flow_control: bool,
    last_peer_stream: u32,
    /// GOAWAY sent: new streams are refused.
    going_away: bool,
    /// The connection is gone (peer closed, I/O error, or protocol error).
    closed: bool,
}

impl State {
    /// Forgets a stream once neither side will send on it any more.
    fn settle(&mut self, id: u32) {
        if self
            .streams
            .get(&id)
            .is_some_and(|s| s.local_done && s.inbound.is_none())
        {
            self.streams.remove(&id);
        }
    }
}

struct Shared {
    out: mpsc::Sender<Out>,
    state: Mutex<State>,
    /// Woken when a send window grows, a stream resets or the connection closes.
    window: Notify,
    peer_closed: watch::Sender<bool>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn send(&self, f: Frame) -> std::io::Result<()> {
        self.out
            .send(Out::Frame(f))
            .await
            .map_err(|_| gone("connection closed"))
    }

    fn mark_closed(&self) {
        let mut st = self.state();
        st.closed = true;
        for s in st.streams.values_mut() {
            s.inbound = None;
            s.credit.close();
        }
        drop(st);
        self.window.notify_waiters();
        self.peer_closed.send_replace(true);
    }

    /// Takes up to `want` bytes of send window for `id`, waiting if the peer keeps windows
    /// and has none open.
    async fn reserve(&self, id: u32, want: usize) -> std::io::Result<usize> {
        loop {
            let notified = self.window.notified();
            {
                let mut st = self.state();
                if st.closed {
                    return Err(gone("connection closed"));
                }
                let flow = st.flow_control;
                let conn_window = st.conn_window;
                let Some(s) = st.streams.get_mut(&id) else {
                    return Err(gone("stream closed"));
                };
                if s.reset {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "stream reset by the peer",
                    ));
                }
                if s.local_done {
                    return Err(gone("stream already finished"));
                }
                let open = s.send_window.min(conn_window);
                let n = if flow {
                    want.min(open.max(0) as usize)
                } else {
                    want
                };
                if n > 0 {
                    s.send_window -= n as i64;
                    st.conn_window -= n as i64;
                    return Ok(n);
                }
            }
            notified.await;
        }
    }
}

fn gone(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, what.to_string())
}

/// A server connection over an upgraded HTTP/1.1 connection (or any byte stream).
pub struct Connection {
    incoming: mpsc::Receiver<Stream>,
    shared: Arc<Shared>,
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
}

impl Connection {
    pub fn new<T>(io: T) -> Connection
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
        let (incoming_tx, incoming) = mpsc::channel(16);
        let shared = Arc::new(Shared {
            out: out_tx,
            state: Mutex::new(State {
                streams: HashMap::new(),
                conn_window: spdy::INITIAL_WINDOW as i64,
                initial_window: spdy::INITIAL_WINDOW as i64,
                flow_control: false,
                last_peer_stream: 0,
                going_away: false,
                closed: false,
            }),
            window: Notify::new(),
            peer_closed: watch::channel(false).0,
        });
        let writer = tokio::spawn(write_loop(wr, out_rx, shared.clone()));
        let reader = tokio::spawn(read_loop(rd, incoming_tx, shared.clone()));
        Connection {
            incoming,
            shared,
            reader,
            writer,
        }
    }

    /// The next stream the client opened (not yet replied to), or None once the client
    /// closed the connection.
    pub async fn next_stream(&mut self) -> Option<Stream> {
        self.incoming.recv().await
    }

    /// Resolves when the client has closed the connection or it failed.
    pub fn peer_closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.shared.peer_closed.subscribe();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }

    /// Ends the connection as kubelet's server does: our side of every stream is finished,
    /// GOAWAY, then the write side shuts down and the client gets a moment to close its
    /// side, so that nothing we sent is lost to a TCP reset.
    pub async fn close(mut self) {
        let (ids, last) = {
            let mut st = self.shared.state();
            st.going_away = true;
            let mut ids = Vec::new();
            for (id, s) in st.streams.iter_mut() {
                // Nothing reads any more: a reader waiting for buffer room must not wait.
                s.inbound = None;
                s.credit.close();
                if !s.local_done {
                    s.local_done = true;
                    ids.push(*id);
                }
            }
            (ids, st.last_peer_stream)
        };
        self.incoming.close();
        for id in ids {
            let _ = self
                .shared
                .send(Frame::Data {
                    stream_id: id,
                    flags: spdy::FLAG_FIN,
                    data: Bytes::new(),
                })
                .await;
        }
        let _ = self
            .shared
            .send(Frame::GoAway {
                last_good_stream_id: last,
                status: 0,
            })
            .await;
        let (tx, rx) = oneshot::channel();
        if self.shared.out.send(Out::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let _ = tokio::time::timeout(CLOSE_WAIT, &mut self.reader).await;
        self.reader.abort();
        self.writer.abort();
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

/// A stream the client opened. Reply with [`Stream::accept`] (or refuse it) before writing.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    reader: StreamReader,
    writer: StreamWriter,
}

impl Stream {
    pub fn header(&self, name: &str) -> Option<&str> {
        spdy::header(&self.headers, name)
    }

    /// Sends the SYN_REPLY; the client's CreateStream returns on it.
    pub async fn accept(&self) -> std::io::Result<()> {
        self.writer
            .shared
            .send(Frame::SynReply {
                stream_id: self.id,
                flags: 0,
                headers: Vec::new(),
            })
            .await
    }

    /// Refuses the stream with RST_STREAM(REFUSED_STREAM).
    pub async fn refuse(self) {
        self.writer.reset_with(spdy::REFUSED_STREAM).await;
    }

    pub fn split(self) -> (StreamReader, StreamWriter) {
        (self.reader, self.writer)
    }

    pub fn writer(&self) -> StreamWriter {
        self.writer.clone()
    }
}

/// What the client sends on a stream.
pub struct StreamReader {
    id: u32,
    rx: mpsc::UnboundedReceiver<Bytes>,
    shared: Arc<Shared>,
}

impl StreamReader {
    /// The next chunk, or None after the client's FIN (or a reset, or the connection's end).
    pub async fn recv(&mut self) -> Option<Bytes> {
        let chunk = self.rx.recv().await?;
        let n = chunk.len() as u32;
        let update = {
            let mut st = self.shared.state();
            match st.streams.get_mut(&self.id) {
                Some(s) => {
                    s.credit.add_permits(n as usize);
                    s.unacked += n;
                    if s.unacked >= spdy::INITIAL_WINDOW / 2 && !s.reset {
                        Some(std::mem::take(&mut s.unacked))
                    } else {
                        None
                    }
                }
                None => None,
            }
        };
        if let Some(delta) = update {
            let _ = self
                .shared
                .send(Frame::WindowUpdate {
                    stream_id: self.id,
                    delta,
                })
                .await;
        }
        Some(chunk)
    }
}

impl Drop for StreamReader {
    /// Nobody reads this stream any more: what the client still sends on it is dropped
    /// instead of waiting for buffer room.
    fn drop(&mut self) {
        let mut st = self.shared.state();
        if let Some(s) = st.streams.get_mut(&self.id) {
            s.inbound = None;
            s.credit.close();
        }
        st.settle(self.id);
    }
}

/// Our side of a stream. Clones write to the same stream.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    shared: Arc<Shared>,
}

impl StreamWriter {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sends `data` as data frames within the send windows.
    pub async fn write(&self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let n = self
                .shared
                .reserve(self.id, data.len().min(MAX_DATA_FRAME))
                .await?;
            self.shared
                .send(Frame::Data {
                    stream_id: self.id,
                    flags: 0,
                    data: Bytes::copy_from_slice(&data[..n]),
                })
                .await?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Finishes our side with an empty FIN data frame. Idempotent.
    pub async fn close(&self) {
        let send = {
            let mut st = self.shared.state();
            let send = match st.streams.get_mut(&self.id) {
                Some(s) if !s.local_done => {
                    s.local_done = true;
                    true
                }
                _ => false,
            };
            st.settle(self.id);
            send
        };
        if send {
            let _ = self
                .shared
                .send(Frame::Data {
                    stream_id: self.id,
                    flags: spdy::FLAG_FIN,
                    data: Bytes::new(),
                })
                .await;
        }
    }

    /// Aborts the stream (RST_STREAM CANCEL) in both directions.
    pub async fn reset(&self) {
        self.reset_with(spdy::CANCEL).await;
    }

    async fn reset_with(&self, status: u32) {
        let send = {
            let mut st = self.shared.state();
            let send = match st.streams.get_mut(&self.id) {
                Some(s) if !s.reset => {
                    s.reset = true;
                    s.local_done = true;
                    s.inbound = None;
                    s.credit.close();
                    true
                }
                _ => false,
            };
            st.settle(self.id);
            send
        };
        self.shared.window.notify_waiters();
        if send {
            let _ = self
                .shared
                .send(Frame::RstStream {
                    stream_id: self.id,
                    status,
                })
                .await;
        }
    }
}

async fn write_loop<W: AsyncWrite>(wr: W, mut rx: mpsc::Receiver<Out>, shared: Arc<Shared>) {
    tokio::pin!(wr);
    let mut enc = FrameEncoder::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut shutdown = None;
        // Batch what is queued into one write.
        while let Some(item) = next.take() {
            match item {
                Out::Frame(f) => {
                    if let Err(e) = enc.encode(&f, &mut buf) {
                        tracing::debug!(error = %e, "cannot encode a SPDY frame");
                    }
                }
                Out::Shutdown(done) => {
                    shutdown = Some(done);
                    break;
                }
            }
            if buf.len() < 256 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        if !buf.is_empty() {
            if let Err(e) = wr.write_all(&buf).await {
                tracing::debug!(error = %e, "SPDY connection write failed");
                shared.mark_closed();
                return;
            }
            buf.clear();
        }
        if let Some(done) = shutdown {
            let _ = wr.flush().await;
            let _ = wr.shutdown().await;
            let _ = done.send(());
            return;
        }
    }
}

async fn read_loop<R: AsyncRead>(rd: R, incoming: mpsc::Sender<Stream>, shared: Arc<Shared>) {
    tokio::pin!(rd);
    let mut dec = FrameDecoder::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    'read: loop {
        loop {
            let frame = match dec.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "SPDY protocol error; closing");
                    let last = shared.state().last_peer_stream;
                    let _ = shared
                        .send(Frame::GoAway {
                            last_good_stream_id: last,
                            status: 1,
                        })
                        .await;
                    break 'read;
                }
            };
            if !handle(frame, &incoming, &shared).await {
                break 'read;
            }
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "SPDY connection read failed");
                break;
            }
        }
    }
    shared.mark_closed();
}

/// Acts on one frame from the client; false ends the connection.
async fn handle(frame: Frame, incoming: &mpsc::Sender<Stream>, shared: &Arc<Shared>) -> bool {
    match frame {
        Frame::SynStream {
            stream_id,
            flags,
            headers,
            ..
        } => {
            let accepted = {
                let mut st = shared.state();
                if stream_id % 2 == 0 || stream_id <= st.last_peer_stream {
                    Err(spdy::PROTOCOL_ERROR)
                } else if st.going_away {
                    Err(spdy::REFUSED_STREAM)
                } else {
                    st.last_peer_stream = stream_id;
                    let (tx, rx) = mpsc::unbounded_channel();
                    let send_window = st.initial_window;
                    st.streams.insert(
                        stream_id,
                        StreamState {
                            send_window,
                            inbound: (flags & spdy::FLAG_FIN == 0).then_some(tx),
                            credit: Arc::new(Semaphore::new(spdy::INITIAL_WINDOW as usize)),
                            unacked: 0,
                            local_done: flags & spdy::FLAG_UNIDIRECTIONAL != 0,
                            reset: false,
                        },
                    );
                    Ok(rx)
                }
            };
            match accepted {
                Ok(rx) => {
                    let stream = Stream {
                        id: stream_id,
                        headers,
                        reader: StreamReader {
                            id: stream_id,
                            rx,
                            shared: shared.clone(),
                        },
                        writer: StreamWriter {
                            id: stream_id,
                            shared: shared.clone(),
                        },
                    };
                    if let Err(refused) = incoming.send(stream).await {
                        refused.0.refuse().await;
                    }
                }
                Err(status) => {
                    let _ = shared.send(Frame::RstStream { stream_id, status }).await;
                }
            }
        }
        Frame::Data {
            stream_id,
            flags,
            data,
        } => {
            let n = data.len();
            let target = {
                let st = shared.state();
                st.streams
                    .get(&stream_id)
                    .and_then(|s| s.inbound.clone().map(|tx| (tx, s.credit.clone())))
            };
            if let Some((tx, credit)) = target
                && n > 0
                && !tx.is_closed()
            {
                // Waits only for a peer that overruns its window (see the module doc).
                let want = n.min(spdy::INITIAL_WINDOW as usize) as u32;
                if let Ok(permits) = credit.acquire_many(want).await
                    && tx.send(data).is_ok()
                {
                    permits.forget();
                }
            }
            if n > 0 {
                let _ = shared
                    .send(Frame::WindowUpdate {
                        stream_id: 0,
                        delta: n as u32,
                    })
                    .await;
            }
            if flags & spdy::FLAG_FIN != 0 {
                let mut st = shared.state();
                if let Some(s) = st.streams.get_mut(&stream_id) {
                    s.inbound = None;
                }
                st.settle(stream_id);
            }
        }
        Frame::RstStream { stream_id, .. } => {
            let mut st = shared.state();
            if let Some(s) = st.streams.get_mut(&stream_id) {
                s.reset = true;
                s.local_done = true;
                s.inbound = None;
                s.credit.close();
            }
            st.settle(stream_id);
            drop(st);
            shared.window.notify_waiters();
        }
        Frame::Settings { entries, .. } => {
            let mut st = shared.state();
            for (_, id, value) in entries {
                if id == spdy::SETTINGS_INITIAL_WINDOW_SIZE {
                    let delta = value as i64 - st.initial_window;
                    st.initial_window = value as i64;
                    st.flow_control = true;
                    for s in st.streams.values_mut() {
                        s.send_window += delta;
                    }
                }
            }
            drop(st);
            shared.window.notify_waiters();
        }
        Frame::WindowUpdate { stream_id, delta } => {
            let mut st = shared.state();
            st.flow_control = true;
            if stream_id == 0 {
                st.conn_window += delta as i64;
            } else if let Some(s) = st.streams.get_mut(&stream_id) {
                s.send_window += delta as i64;
            }
            drop(st);
            shared.window.notify_waiters();
        }
        Frame::Ping { id } => {
            // Odd ids are the client's pings; even ones would be answers to ours.
            if id % 2 == 1 {
                let _ = shared.send(Frame::Ping { id }).await;
            }
        }
        Frame::GoAway { .. } => {
            // The client opens no more streams; the open ones carry on until it closes.
            shared.state().going_away = true;
        }
        Frame::SynReply { .. } | Frame::Headers { .. } | Frame::Unknown { .. } => {}
    }
    true
}

impl super::ChannelIn for StreamReader {
    async fn recv(&mut self) -> Option<Bytes> {
        StreamReader::recv(self).await
    }
}

impl super::ChannelOut for StreamWriter {
    async fn write(&self, data: &[u8]) -> std::io::Result<()> {
        StreamWriter::write(self, data).await
    }

    async fn close(&self) {
        StreamWriter::close(self).await
    }
}
