//! The last 64 KiB of a command's output, for the task's result.

const KEEP: usize = 64 * 1024;

#[derive(Default)]
pub struct Tail {
    text: String,
    cut: bool,
}

impl Tail {
    pub fn push(&mut self, s: &str) {
        self.text.push_str(s);
        if self.text.len() > 2 * KEEP {
            let mut at = self.text.len() - KEEP;
            while !self.text.is_char_boundary(at) {
                at += 1;
            }
            self.text.drain(..at);
            self.cut = true;
        }
    }

    pub fn into_string(self) -> String {
        if self.cut { format!("[... earlier output not kept ...]\n{}", self.text) } else { self.text }
    }
}
