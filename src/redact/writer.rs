//! A `tracing_subscriber` writer that scrubs what it writes, line by line: install it with
//! `fmt().with_writer(ScrubbingMakeWriter::new(std::io::stderr))`.
//!
//! The formatter writes one event per writer; the writer buffers the event and, when dropped
//! or flushed, scrubs each complete line and writes it on. Replacements contain no quote or
//! backslash, so a JSON log line stays valid JSON as long as no rule's match spans a quote
//! (none of the value-capturing rules does).

use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

use super::Scrubber;

/// Wraps a [`MakeWriter`] so that every line written through it is scrubbed first.
#[derive(Debug, Clone)]
pub struct ScrubbingMakeWriter<M> {
    inner: M,
}

/// The writer [`ScrubbingMakeWriter`] hands out: buffers, then scrubs on flush or drop.
pub struct ScrubbingWriter<W: Write> {
    inner: W,
    buffer: Vec<u8>,
}

// === impl ScrubbingMakeWriter ===

impl<M> ScrubbingMakeWriter<M> {
    /// Scrubs everything written through `inner`.
    pub fn new(inner: M) -> Self {
        Self { inner }
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for ScrubbingMakeWriter<M> {
    type Writer = ScrubbingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        ScrubbingWriter::new(self.inner.make_writer())
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        ScrubbingWriter::new(self.inner.make_writer_for(meta))
    }
}

// === impl ScrubbingWriter ===

impl<W: Write> ScrubbingWriter<W> {
    /// Scrubs everything written to `inner`.
    pub fn new(inner: W) -> Self {
        Self { inner, buffer: Vec::new() }
    }

    /// Scrubs and writes the complete lines in the buffer (all of it when `all`).
    fn drain(&mut self, all: bool) -> io::Result<()> {
        let end = if all { self.buffer.len() } else { self.buffer.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1) };
        if end == 0 {
            return Ok(());
        }
        let chunk: Vec<u8> = self.buffer.drain(..end).collect();
        let text = String::from_utf8_lossy(&chunk);
        let scrubber = Scrubber::global();
        let mut out = String::with_capacity(text.len());
        for line in text.split_inclusive('\n') {
            out.push_str(&scrubber.scrub(line).text);
        }
        self.inner.write_all(out.as_bytes())
    }
}

impl<W: Write> Write for ScrubbingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.drain(false)?;
        self.inner.flush()
    }
}

impl<W: Write> Drop for ScrubbingWriter<W> {
    fn drop(&mut self) {
        // Drop cannot report an error; the event is lost exactly as with the inner writer.
        let _ = self.drain(true);
        let _ = self.inner.flush();
    }
}
