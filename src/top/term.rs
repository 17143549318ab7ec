//! The terminal side of `walrelay top`: raw keyboard input and a redrawn
//! screen, restored on drop (also on an error or a panic unwinding through).

use std::io::{IsTerminal, Write};

/// Stdin in non-canonical mode without echo or signal keys, so `q` and
/// Ctrl-C arrive as bytes; the alternate screen with the cursor hidden.
pub(crate) struct Screen {
    saved: Option<libc::termios>,
    out: std::io::Stdout,
    fullscreen: bool,
}

impl Screen {
    /// Takes over the terminal when stdout is one; otherwise frames are
    /// printed one after another.
    pub(crate) fn enter() -> std::io::Result<Screen> {
        let fullscreen = std::io::stdout().is_terminal();
        let mut saved = None;
        if std::io::stdin().is_terminal() {
            // SAFETY: a zeroed termios is a valid out-parameter for tcgetattr
            // on fd 0, which is a terminal (checked above).
            let mut t: libc::termios = unsafe { std::mem::zeroed() };
            if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let orig = t;
            t.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
            t.c_cc[libc::VMIN] = 1;
            t.c_cc[libc::VTIME] = 0;
            // SAFETY: `t` was filled by tcgetattr and only flags were changed.
            if unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            saved = Some(orig);
        }
        let mut out = std::io::stdout();
        if fullscreen {
            // Alternate screen, cursor hidden.
            out.write_all(b"\x1b[?1049h\x1b[?25l")?;
            out.flush()?;
        }
        Ok(Screen {
            saved,
            out,
            fullscreen,
        })
    }

    /// Columns of the terminal (80 when unknown).
    pub(crate) fn width(&self) -> usize {
        // SAFETY: TIOCGWINSZ fills a winsize; a zeroed one is a valid buffer.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        let ok = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut ws) } == 0;
        if ok && ws.ws_col > 0 {
            ws.ws_col as usize
        } else {
            80
        }
    }

    /// Replaces the screen's content with `lines`.
    pub(crate) fn draw(&mut self, lines: &[String]) -> std::io::Result<()> {
        let mut buf = String::new();
        if self.fullscreen {
            buf.push_str("\x1b[H");
            for l in lines {
                buf.push_str(l);
                buf.push_str("\x1b[K\r\n");
            }
            buf.push_str("\x1b[J");
        } else {
            for l in lines {
                buf.push_str(l);
                buf.push('\n');
            }
            buf.push('\n');
        }
        self.out.write_all(buf.as_bytes())?;
        self.out.flush()
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        if self.fullscreen {
            let _ = self.out.write_all(b"\x1b[?25h\x1b[?1049l");
            let _ = self.out.flush();
        }
        if let Some(t) = &self.saved {
            // SAFETY: restores the attributes read in `enter`.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
        }
    }
}

/// Bytes typed on stdin, read by a thread (a blocking read cannot be
/// cancelled; the thread ends with the process). The channel closes at EOF.
pub(crate) fn keys() -> tokio::sync::mpsc::UnboundedReceiver<u8> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin();
        let mut b = [0u8; 1];
        while let Ok(1) = stdin.read(&mut b) {
            if tx.send(b[0]).is_err() {
                return;
            }
        }
    });
    rx
}
