//! Launches real redis-server processes (loopback only) and checks the
//! crate's promises: ports, cli, info, AOF restart, cleanup, cluster,
//! sentinel and the error messages.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};

use redis_process::{
    RedisCluster, RedisOptions, RedisProcessError, RedisSentinel, RedisServer, free_port,
};

fn proc_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn set_get_and_info_field() {
    let server = RedisServer::start().expect("start");
    assert_eq!(server.cli(&["set", "k", "v"]).unwrap(), "OK");
    assert_eq!(server.cli(&["get", "k"]).unwrap(), "v");
    assert_eq!(server.cli(&["get", "missing"]).unwrap(), "");

    let used: u64 = server
        .info_field("memory", "used_memory")
        .unwrap()
        .parse()
        .expect("used_memory is a number");
    assert!(used > 0);
    assert_eq!(
        server.info_field("server", "tcp_port").unwrap(),
        server.port().to_string()
    );
    assert_eq!(
        server.info_field("server", "process_id").unwrap(),
        server.pid().to_string()
    );
    let err = server.info_field("memory", "no_such_field").unwrap_err();
    assert!(
        matches!(err, RedisProcessError::InfoFieldMissing { .. }),
        "{err}"
    );

    assert_eq!(
        server.addr().to_string(),
        format!("127.0.0.1:{}", server.port())
    );
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
    assert!(server.dir().join("redis.log").exists());
    // Defaults: no RDB snapshots, no AOF, loopback only.
    assert_eq!(server.cli(&["config", "get", "save"]).unwrap(), "save");
    assert_eq!(
        server.cli(&["config", "get", "appendonly"]).unwrap(),
        "appendonly\nno"
    );
    assert_eq!(
        server.cli(&["config", "get", "bind"]).unwrap(),
        "bind\n127.0.0.1"
    );
}

#[test]
fn cli_error_reply_is_an_error() {
    let server = RedisServer::start().expect("start");
    let err = server.cli(&["set", "only-a-key"]).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RedisProcessError::CliFailed { .. }), "{msg}");
    assert!(msg.contains("wrong number of arguments"), "{msg}");
    assert!(server.command(&["NO-SUCH-COMMAND"]).is_err());
    assert_eq!(server.command(&["PING"]).unwrap(), "PONG");
}

#[test]
fn restart_with_appendonly_keeps_key() {
    let mut server = RedisServer::start_with(RedisOptions {
        appendonly: true,
        ..RedisOptions::default()
    })
    .expect("start");
    let (port, old_pid) = (server.port(), server.pid());
    server.cli(&["set", "durable", "yes"]).unwrap();
    server.cli(&["rpush", "list", "a", "b", "c"]).unwrap();

    server.restart().expect("restart");
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), old_pid);
    assert!(!proc_exists(old_pid), "old process {old_pid} still exists");
    assert_eq!(server.cli(&["get", "durable"]).unwrap(), "yes");
    assert_eq!(server.cli(&["llen", "list"]).unwrap(), "3");
    assert_eq!(
        server.info_field("persistence", "aof_enabled").unwrap(),
        "1"
    );
}

#[test]
fn restart_without_appendonly_loses_data_and_stop_is_idempotent() {
    let mut server = RedisServer::start().expect("start");
    server.cli(&["set", "volatile", "1"]).unwrap();
    server.stop();
    server.stop();
    assert!(!server.is_running());
    assert!(
        server.cli(&["ping"]).is_err(),
        "cli works on a stopped server"
    );
    server.restart().expect("restart");
    assert!(server.is_running());
    assert_eq!(server.cli(&["exists", "volatile"]).unwrap(), "0");
}

#[test]
fn two_servers_get_different_ports() {
    let a = RedisServer::start().expect("start a");
    let b = RedisServer::start().expect("start b");
    assert_ne!(a.port(), b.port());
    assert_ne!(a.dir(), b.dir());
    a.cli(&["set", "who", "a"]).unwrap();
    assert_eq!(b.cli(&["exists", "who"]).unwrap(), "0");
}

#[test]
fn drop_kills_the_process_and_removes_the_dir() {
    let server = RedisServer::start().expect("start");
    let (pid, dir): (u32, PathBuf) = (server.pid(), server.dir().to_path_buf());
    assert!(proc_exists(pid));
    assert!(dir.exists());
    drop(server);
    assert!(!proc_exists(pid), "pid {pid} still exists after drop");
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
}

#[test]
fn explicit_port_and_extra_args() {
    let port = free_port().unwrap();
    let server = RedisServer::start_with(RedisOptions {
        port: Some(port),
        extra_args: vec!["--maxmemory".into(), "10mb".into()],
        ..RedisOptions::default()
    })
    .expect("start");
    assert_eq!(server.port(), port);
    assert_eq!(
        server.info_field("memory", "maxmemory").unwrap(),
        "10485760"
    );
}

#[test]
fn taken_explicit_port_fails_with_log_tail() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let err = RedisServer::start_with(RedisOptions {
        port: Some(port),
        ..RedisOptions::default()
    })
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RedisProcessError::Exited { .. }), "{msg}");
    assert!(msg.contains("Address already in use"), "{msg}");
    assert!(msg.starts_with("redis-server on 127.0.0.1:"), "{msg}");
}

#[test]
fn bad_option_fails_with_stderr_in_message() {
    let err = RedisServer::start_with(RedisOptions {
        extra_args: vec!["--no-such-directive".into(), "1".into()],
        ..RedisOptions::default()
    })
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RedisProcessError::Exited { .. }), "{msg}");
    assert!(msg.contains("no-such-directive"), "{msg}");
}

#[test]
fn missing_binary_is_a_clear_error() {
    let err = RedisServer::start_with(RedisOptions {
        binary: Some("/nonexistent/redis-server".into()),
        ..RedisOptions::default()
    })
    .unwrap_err();
    assert!(
        matches!(err, RedisProcessError::ServerNotFound { .. }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "redis-server not found at /nonexistent/redis-server \
         (install the redis-server package or set REDIS_SERVER)"
    );
    let on_path = RedisProcessError::ServerNotFound {
        binary: "redis-server".into(),
    };
    assert_eq!(
        on_path.to_string(),
        "redis-server not found on PATH (install the redis-server package or set REDIS_SERVER)"
    );
}

#[test]
fn cluster_of_three_reaches_ok() {
    let cluster = RedisCluster::start(3).expect("cluster");
    assert_eq!(cluster.nodes().len(), 3);
    for node in cluster.nodes() {
        let info = node.cli(&["cluster", "info"]).unwrap();
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(info.contains("cluster_known_nodes:3"), "{info}");
        // The bus port is the default offset.
        assert_eq!(
            node.cli(&["config", "get", "cluster-port"]).unwrap(),
            "cluster-port\n0"
        );
    }
    let node = &cluster.nodes()[0];
    assert_eq!(node.cli(&["-c", "set", "k", "v"]).unwrap(), "OK");
    // Keys spread over all nodes: write several, read them back from each node.
    for i in 0..20 {
        let key = format!("key:{i}");
        node.cli(&["-c", "set", &key, &i.to_string()]).unwrap();
    }
    for n in cluster.nodes() {
        assert_eq!(n.cli(&["-c", "get", "k"]).unwrap(), "v");
        assert_eq!(n.cli(&["-c", "get", "key:7"]).unwrap(), "7");
    }
    let p: Vec<u16> = cluster.nodes().iter().map(|n| n.port()).collect();
    assert_eq!(
        cluster.url(),
        format!(
            "redis-cluster://127.0.0.1:{}?node=127.0.0.1:{}&node=127.0.0.1:{}",
            p[0], p[1], p[2]
        )
    );

    let pids: Vec<u32> = cluster.nodes().iter().map(|n| n.pid()).collect();
    drop(cluster);
    for pid in pids {
        assert!(!proc_exists(pid), "cluster node pid {pid} still exists");
    }
}

#[test]
fn cluster_of_one_is_built_by_hand() {
    let cluster = RedisCluster::start(1).expect("cluster");
    let node = &cluster.nodes()[0];
    assert_eq!(node.cli(&["-c", "set", "a", "1"]).unwrap(), "OK");
    assert_eq!(
        cluster.url(),
        format!("redis-cluster://127.0.0.1:{}", node.port())
    );
    assert!(RedisCluster::start(0).is_err());
}

#[test]
fn sentinel_reports_the_master() {
    let sentinel = RedisSentinel::start().expect("sentinel");
    let reply = sentinel
        .sentinel()
        .cli(&["sentinel", "get-master-addr-by-name", "mymaster"])
        .unwrap();
    assert_eq!(reply, format!("127.0.0.1\n{}", sentinel.master().port()));
    assert_eq!(
        sentinel.url(),
        format!(
            "redis-sentinel://127.0.0.1:{}/0?sentinelServiceName=mymaster",
            sentinel.sentinel().port()
        )
    );
    assert_eq!(sentinel.master().cli(&["set", "k", "v"]).unwrap(), "OK");
    assert!(sentinel.sentinel().dir().join("sentinel.conf").exists());

    let pids = [sentinel.master().pid(), sentinel.sentinel().pid()];
    drop(sentinel);
    for pid in pids {
        assert!(!proc_exists(pid), "pid {pid} still exists after drop");
    }
}
