//! Keeping the tail of a stream: a task's live output, a plugin's last stderr lines.

use std::collections::VecDeque;

use loom_protocol::OutputStream;

/// Default cap on each of a result's `stdout` and `stderr` built from `output` notifications.
pub const OUTPUT_TAIL_BYTES: usize = 64 * 1024;

/// The last `cap` bytes of a text stream. Appending is amortised O(1): the buffer is
/// compacted only when it grows past twice the cap.
#[derive(Debug, Clone, Default)]
pub struct TailBuffer {
    text: String,
    cap: usize,
    dropped: usize,
}

impl TailBuffer {
    /// An empty buffer keeping at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        TailBuffer { text: String::new(), cap, dropped: 0 }
    }

    /// Appends `data`, dropping the oldest bytes beyond the cap.
    pub fn push(&mut self, data: &str) {
        self.text.push_str(data);
        if self.text.len() > self.cap.saturating_mul(2).max(1024) {
            self.compact();
        }
    }

    /// Whether nothing was ever appended.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty() && self.dropped == 0
    }

    /// The kept text, with a note in front when earlier bytes were dropped.
    pub fn into_string(mut self) -> String {
        self.compact();
        if self.dropped == 0 {
            return self.text;
        }
        format!("[... {} earlier bytes not kept ...]\n{}", self.dropped, self.text)
    }

    fn compact(&mut self) {
        if self.text.len() <= self.cap {
            return;
        }
        let mut cut = self.text.len() - self.cap;
        while !self.text.is_char_boundary(cut) {
            cut += 1;
        }
        self.text.drain(..cut);
        self.dropped += cut;
    }
}

/// Cuts `text` to its last `cap` bytes (never splitting a character), with the note
/// [`TailBuffer`] puts in front saying how many bytes were cut. Text within `cap` is
/// left alone.
pub fn keep_tail(text: &mut String, cap: usize) {
    if text.len() <= cap {
        return;
    }
    let mut tail = TailBuffer::new(cap);
    tail.push(text);
    *text = tail.into_string();
}

/// Live output of one task, from `output` notifications.
#[derive(Debug, Clone)]
pub struct CapturedOutput {
    /// The command's standard output.
    pub stdout: TailBuffer,
    /// The command's standard error.
    pub stderr: TailBuffer,
}

impl CapturedOutput {
    /// Appends `data` to `stream`'s buffer.
    pub fn push(&mut self, stream: OutputStream, data: &str) {
        match stream {
            OutputStream::Stdout => self.stdout.push(data),
            OutputStream::Stderr => self.stderr.push(data),
        }
    }
}

impl Default for CapturedOutput {
    fn default() -> Self {
        CapturedOutput { stdout: TailBuffer::new(OUTPUT_TAIL_BYTES), stderr: TailBuffer::new(OUTPUT_TAIL_BYTES) }
    }
}

/// The last few lines of a plugin's stderr, for crash reports.
#[derive(Debug, Default)]
pub struct LastLines {
    lines: VecDeque<String>,
}

impl LastLines {
    /// How many lines are kept.
    pub const KEEP: usize = 20;

    /// Records a line.
    pub fn push(&mut self, line: String) {
        if self.lines.len() == Self::KEEP {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    /// The kept lines, oldest first, each indented, or `None` when there are none.
    pub fn render(&self) -> Option<String> {
        if self.lines.is_empty() {
            return None;
        }
        Some(self.lines.iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_tail_and_says_how_much_was_cut() {
        let mut b = TailBuffer::new(10);
        for _ in 0..500 {
            b.push("0123456789");
        }
        b.push("END");
        let s = b.into_string();
        assert!(s.ends_with("3456789END"), "{s}");
        assert!(s.starts_with("[... 4993 earlier bytes not kept ...]"), "{s}");
    }

    #[test]
    fn never_splits_a_character() {
        let mut b = TailBuffer::new(5);
        b.push("ééééé");
        let s = b.into_string();
        assert!(s.ends_with("éé"), "{s}");
    }

    #[test]
    fn small_output_is_kept_whole() {
        let mut b = TailBuffer::new(100);
        b.push("hello\n");
        b.push("world\n");
        assert_eq!(b.into_string(), "hello\nworld\n");
    }

    #[test]
    fn keep_tail_cuts_long_text_only() {
        let mut short = "hello".to_owned();
        keep_tail(&mut short, 5);
        assert_eq!(short, "hello");
        let mut long = "0123456789".repeat(3);
        keep_tail(&mut long, 10);
        assert_eq!(long, "[... 20 earlier bytes not kept ...]\n0123456789");
    }

    #[test]
    fn last_lines_keeps_twenty() {
        let mut l = LastLines::default();
        assert!(l.render().is_none());
        for i in 0..30 {
            l.push(format!("line {i}"));
        }
        let r = l.render().unwrap();
        assert!(r.starts_with("  line 10\n") && r.ends_with("  line 29"), "{r}");
    }
}
