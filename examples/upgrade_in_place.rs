//! A service that embeds connwarden and upgrades itself on `SIGUSR2`, as `connwarden serve`
//! does: the new process (the executable found at this one's path, so a rebuilt binary) takes
//! the listener and every plain connection, and this one exits once its items are handed to
//! its sink. Linux only.
//!
//! ```text
//! cargo build --example upgrade_in_place && ./target/debug/examples/upgrade_in_place &
//! nc 127.0.0.1 7102        # type {"ip":"192.0.2.1","id":1} and keep the connection open
//! kill -USR2 %1            # the same connection goes on with the new process: type another
//! ```

#[cfg(target_os = "linux")]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use connwarden::sink::ChannelSink;
    use connwarden::upgrade::{Inherited, Program, Upgrade};
    use connwarden::{Config, Server};
    use tokio::signal::unix::{signal, SignalKind};

    // Where argv[0] leads, resolved before anything could change the working directory.
    let program = Program::of_this_process();
    let config = Config {
        listen: vec!["127.0.0.1:7102".parse()?],
        admin: None,
        ..Config::default()
    };
    let (sink, mut records) = ChannelSink::new(1024);
    let mut builder = Server::builder(config).sink(sink);
    // Started by an upgrade: take over from the process that started this one.
    let inherited = Inherited::from_env()?;
    let upgraded = inherited.is_some();
    if let Some(inherited) = inherited {
        builder = builder.inherit(inherited);
    }
    let server = builder.build()?;
    let upgrader = server.upgrader();
    let mut usr2 = signal(SignalKind::user_defined2())?;
    tokio::spawn(async move {
        while usr2.recv().await.is_some() {
            match upgrader.upgrade(Upgrade::same_program(&program)).await {
                Ok(pid) => println!("pid {pid} took over; handing over the connections"),
                Err(error) => println!("upgrade failed, still serving: {error}"),
            }
        }
    });
    let pid = std::process::id();
    tokio::spawn(async move {
        while let Some(record) = records.recv().await {
            println!("[{pid}] conn {} sent {}", record.conn_id(), record.ip);
        }
    });
    let listeners = server.bind()?;
    println!("[{pid}] serving on 127.0.0.1:7102 (taken over: {upgraded})");
    let report = server
        .run(listeners, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    println!(
        "[{pid}] done: {} items written, {} connections handed over",
        report.written, report.handed_over
    );
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("the binary upgrade passes sockets with SCM_RIGHTS: Linux only");
}
