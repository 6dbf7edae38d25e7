//! Long-lived TCP connections that talk all the time, to see what a failover costs an
//! application: each client sends 8 bytes every period and the server echoes them; the
//! client records every gap between two echoes longer than [`Held::REPORTED_GAP`], and
//! whether its connection broke (reset, closed, or no echo for [`Held::GIVE_UP`]).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddrV4, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// What one connection lived through.
#[derive(Clone, Debug)]
pub struct ConnReport {
    pub from: String,
    /// Why it broke, if it did.
    pub broken: Option<String>,
    pub echoes: u64,
    /// Gaps between two echoes longer than [`Held::REPORTED_GAP`]: when each began (since
    /// the connections started) and how long it lasted.
    pub gaps: Vec<(Duration, Duration)>,
}

impl ConnReport {
    pub fn longest_gap(&self) -> Duration {
        self.gaps.iter().map(|g| g.1).max().unwrap_or_default()
    }
}

/// Connections held open between two namespaces.
pub struct Held {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<ConnReport>>,
    servers: Vec<JoinHandle<()>>,
    pub started: Instant,
}

impl Held {
    /// A gap between echoes is reported when longer than this (the period is 100 ms).
    pub const REPORTED_GAP: Duration = Duration::from_millis(150);
    /// A connection with no echo for this long counts as broken: long enough for TCP's
    /// retransmissions, backing off, to find a router that came back after seconds.
    pub const GIVE_UP: Duration = Duration::from_secs(20);
    /// Longest a whole run may last, whatever the caller does.
    const LONGEST_RUN: Duration = Duration::from_secs(120);

    /// Starts a server in `server_ns` on `listen`, then `count` connections from
    /// `client_ns` to `target` (the server's address as the client sees it), each sending
    /// every `period`. Returns once every connection is open (panics if one cannot open).
    pub fn start(
        server_ns: &str,
        listen: SocketAddrV4,
        client_ns: &str,
        target: SocketAddrV4,
        count: usize,
        period: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let listener = crate::netns::within(server_ns, || TcpListener::bind(listen))
            .unwrap_or_else(|e| panic!("listening on {listen} in {server_ns}: {e}"));
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let started = Instant::now();
        let accepting = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut echoes = Vec::new();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Self::LONGEST_RUN {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let stop = stop.clone();
                            echoes.push(std::thread::spawn(move || echo(stream, &stop)));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                for e in echoes {
                    let _ = e.join();
                }
            })
        };
        let opened = Arc::new(AtomicUsize::new(0));
        let clients = (0..count)
            .map(|i| {
                let (stop, ns, opened) = (stop.clone(), client_ns.to_string(), opened.clone());
                std::thread::spawn(move || {
                    let from = format!("{ns}#{i}");
                    let stream = crate::netns::within(&ns, || {
                        TcpStream::connect_timeout(&target.into(), Duration::from_secs(5))
                    });
                    let stream = match stream {
                        Ok(s) => s,
                        Err(e) => {
                            return ConnReport {
                                from,
                                broken: Some(format!("connect: {e}")),
                                echoes: 0,
                                gaps: Vec::new(),
                            };
                        }
                    };
                    opened.fetch_add(1, Ordering::Relaxed);
                    talk(stream, from, period, started, &stop)
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        while opened.load(Ordering::Relaxed) < count && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            stop,
            clients,
            servers: vec![accepting],
            started,
        }
    }

    /// Stops every connection and returns what each lived through.
    pub fn finish(self) -> Vec<ConnReport> {
        self.stop.store(true, Ordering::Relaxed);
        let reports = self
            .clients
            .into_iter()
            .map(|c| {
                c.join().unwrap_or_else(|_| ConnReport {
                    from: "?".into(),
                    broken: Some("client thread panicked".into()),
                    echoes: 0,
                    gaps: Vec::new(),
                })
            })
            .collect();
        for s in self.servers {
            let _ = s.join();
        }
        reports
    }
}

fn echo(mut stream: TcpStream, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 8];
    while !stop.load(Ordering::Relaxed) {
        match stream.read_exact(&mut buf) {
            Ok(()) => {
                if stream.write_all(&buf).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

fn talk(
    mut stream: TcpStream,
    from: String,
    period: Duration,
    started: Instant,
    stop: &AtomicBool,
) -> ConnReport {
    let mut report = ConnReport {
        from,
        broken: None,
        echoes: 0,
        gaps: Vec::new(),
    };
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Held::GIVE_UP));
    let mut last_echo = Instant::now();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) && started.elapsed() < Held::LONGEST_RUN {
        seq += 1;
        if let Err(e) = stream.write_all(&seq.to_le_bytes()) {
            report.broken = Some(format!("send: {e}"));
            break;
        }
        let mut buf = [0u8; 8];
        if let Err(e) = stream.read_exact(&mut buf) {
            report.broken = Some(format!("echo: {e}"));
            break;
        }
        let now = Instant::now();
        let gap = now - last_echo;
        if gap > Held::REPORTED_GAP && report.echoes > 0 {
            report.gaps.push((last_echo - started, gap));
        }
        last_echo = now;
        report.echoes += 1;
        std::thread::sleep(period);
    }
    report
}
