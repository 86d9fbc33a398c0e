//! Exit codes, the same for every command.

use std::process::ExitCode;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: everything succeeded.
    Success = 0,
    /// 1: a task, a conformance check or a cluster operation failed.
    Failed = 1,
    /// 2: a usage, configuration or start-up error; nothing ran.
    Usage = 2,
}

impl Exit {
    /// [`Exit::Success`] when `ok`, else [`Exit::Failed`].
    pub fn ok_if(ok: bool) -> Exit {
        if ok { Exit::Success } else { Exit::Failed }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_what_scripts_expect() {
        assert_eq!(Exit::Success as u8, 0);
        assert_eq!(Exit::Failed as u8, 1);
        assert_eq!(Exit::Usage as u8, 2);
        assert_eq!(Exit::ok_if(false), Exit::Failed);
    }
}
