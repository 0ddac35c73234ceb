//! Where log lines go: a shared buffer that one writer thread empties into
//! stderr in batches.
//!
//! The server logs a line per review, tens of thousands a second. The
//! previous sink (tracing-appender's non-blocking writer) handed each line
//! to its writer thread through a channel, which woke that thread for
//! nearly every line: a futex call, a context switch and a `write` per
//! review, measured at about 18 µs of CPU per review under load
//! (BENCHMARKS.md), more than the review itself. Here a line costs a short
//! mutex hold and a copy; the writer thread wakes once per batch (the
//! first line into an empty buffer starts a short gathering window) and
//! writes the whole batch with one call.
//!
//! What stays the same: a worker never waits for stderr (the thread does
//! the write, outside the lock), memory is bounded (past
//! [`MAX_BUFFERED`] lines are dropped, counted, and reported by a line of
//! their own once stderr drains), and dropping the [`Guard`] at exit
//! writes whatever is queued. A line reaches stderr at most
//! [`BATCH_WINDOW`] after it is logged.

use std::io::{self, Write};
use std::mem;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long the writer gathers lines after the first one of a batch.
pub const BATCH_WINDOW: Duration = Duration::from_millis(20);
/// A batch this large is written at once, without waiting for the window.
const HIGH_WATER: usize = 64 * 1024;
/// Bytes queued at most; a stalled stderr cannot grow memory past this.
pub const MAX_BUFFERED: usize = 4 * 1024 * 1024;
/// Batch buffer capacity kept between batches; a burst's larger buffer is
/// given back.
const KEEP_CAPACITY: usize = 256 * 1024;

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    dropped: u64,
    closing: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a buffer of whole lines
        // (appends are single copies): still safe to use.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The `MakeWriter` handed to tracing-subscriber.
#[derive(Clone)]
pub struct Sink {
    shared: Arc<Shared>,
}

/// Flushes what is queued and stops the writer thread when dropped.
pub struct Guard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the writer thread that empties the sink into `out`.
pub fn start<W: Write + Send + 'static>(out: W) -> io::Result<(Sink, Guard)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        wake: Condvar::new(),
    });
    let thread = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("zonewise-log".into())
            .spawn(move || drain(&shared, out))?
    };
    Ok((
        Sink {
            shared: shared.clone(),
        },
        Guard {
            shared,
            thread: Some(thread),
        },
    ))
}

fn drain<W: Write>(shared: &Shared, mut out: W) {
    let mut batch = Vec::new();
    loop {
        let mut state = shared.lock();
        while state.buf.is_empty() && !state.closing {
            state = shared
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if state.buf.is_empty() && state.closing {
            return;
        }
        if !state.closing {
            state = shared
                .wake
                .wait_timeout_while(state, BATCH_WINDOW, |s| {
                    !s.closing && s.buf.len() < HIGH_WATER
                })
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        mem::swap(&mut state.buf, &mut batch);
        let dropped = mem::take(&mut state.dropped);
        drop(state);
        // A failing stderr loses this batch; there is nowhere else to say so.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        batch.shrink_to(KEEP_CAPACITY);
        if dropped > 0 {
            tracing::warn!(lines = dropped, "log lines dropped: stderr did not keep up");
        }
    }
}

/// One event's writer; tracing-subscriber writes each formatted line with
/// a single `write_all`.
pub struct SinkWriter<'a> {
    shared: &'a Shared,
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = SinkWriter<'a>;

    fn make_writer(&'a self) -> SinkWriter<'a> {
        SinkWriter {
            shared: &self.shared,
        }
    }
}

impl Write for SinkWriter<'_> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut state = self.shared.lock();
        let before = state.buf.len();
        if before + line.len() > MAX_BUFFERED {
            state.dropped += 1;
            return Ok(line.len());
        }
        state.buf.extend_from_slice(line);
        drop(state);
        // Wake the writer for the first line of a batch, and when a batch
        // is big enough to write without waiting out the window; not for
        // every line.
        if before == 0 || (before < HIGH_WATER && before + line.len() >= HIGH_WATER) {
            self.shared.wake.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    /// An output that records what reached it.
    #[derive(Clone, Default)]
    struct Recorded(Arc<Mutex<Vec<u8>>>);

    impl Write for Recorded {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn text(r: &Recorded) -> String {
        String::from_utf8(r.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn lines_arrive_in_order_within_the_window_and_all_at_exit() {
        let out = Recorded::default();
        let (sink, guard) = start(out.clone()).unwrap();
        sink.make_writer().write_all(b"first\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while text(&out).is_empty() {
            assert!(Instant::now() < deadline, "a lone line was never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(text(&out), "first\n");
        for i in 0..10_000 {
            sink.make_writer()
                .write_all(format!("line {i}\n").as_bytes())
                .unwrap();
        }
        drop(guard);
        let all = text(&out);
        let lines: Vec<&str> = all.lines().collect();
        assert_eq!(lines.len(), 10_001);
        assert!(
            lines[1..]
                .iter()
                .enumerate()
                .all(|(i, l)| *l == format!("line {i}"))
        );
    }

    /// An output that blocks until told to go on, like a full pipe.
    struct Stalled(Mutex<mpsc::Receiver<()>>, Recorded);

    impl Write for Stalled {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let _ = self.0.lock().unwrap().recv();
            self.1.write(b)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_stderr_drops_lines_instead_of_blocking_or_growing() {
        let (go, wait) = mpsc::channel();
        let out = Recorded::default();
        let (sink, guard) = start(Stalled(Mutex::new(wait), out.clone())).unwrap();
        let line = [b'x'; 1023]
            .iter()
            .copied()
            .chain([b'\n'])
            .collect::<Vec<u8>>();
        // The writer takes the first batch and stalls on it; everything
        // after queues up to the bound, and the rest is dropped at once.
        sink.make_writer().write_all(&line).unwrap();
        std::thread::sleep(BATCH_WINDOW * 3);
        let start = Instant::now();
        let n = 3 * MAX_BUFFERED / line.len();
        for _ in 0..n {
            sink.make_writer().write_all(&line).unwrap();
        }
        assert!(start.elapsed() < Duration::from_secs(5), "writes blocked");
        assert!(sink.shared.lock().buf.len() <= MAX_BUFFERED);
        let dropped = sink.shared.lock().dropped;
        assert!(dropped >= (n - MAX_BUFFERED / line.len()) as u64);
        // Unstall: every batch (and the drop report) gets through.
        drop(go);
        drop(guard);
        let written = text(&out).lines().filter(|l| l.starts_with('x')).count() as u64;
        assert_eq!(written + dropped, n as u64 + 1);
    }
}
