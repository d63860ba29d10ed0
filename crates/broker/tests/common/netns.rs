//! A private network of Linux network namespaces made by the test: a
//! bridge in a namespace of its own and one namespace per node, joined by
//! veth pairs, on a 10.213.N.0/24 of its own. All traffic stays inside
//! these namespaces, except with [`Lan::attach_host`]: one veth then joins
//! the test process's own namespace to the bridge (at .254), so the test
//! can load the nodes and read them, and is removed with the rest. Each node's
//! names are in its `/etc/netns/<ns>/hosts` (which `ip netns exec` mounts
//! over `/etc/hosts`), so a node can move to a new address behind the same
//! name, as a Kubernetes pod does when it restarts.
//!
//! Needs root (`ip netns`), as the test machines give. Everything is
//! removed on drop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Runs `ip args`; panics with its stderr when it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {} (the network tests need root and iproute2)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// The network: names → addresses, the namespaces, the processes started
/// in them.
pub struct Lan {
    tag: String,
    subnet: String,
    switch: String,
    /// The veth in the test's own namespace, if attached.
    host_link: Option<String>,
    /// Node name → (namespace, last octet of its address).
    nodes: BTreeMap<String, (String, u8)>,
    children: Vec<Child>,
}

impl Lan {
    /// A namespace per name in `names`, addresses 10.213.0.1, .2, ... in
    /// order, every name in every node's hosts file.
    pub fn new(names: &[&str]) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("bk{}n{n}", std::process::id());
        let switch = format!("{tag}-sw");
        let mut lan = Self {
            tag: tag.clone(),
            // Per process too, so two test runs on one machine do not
            // route the same subnet from the root namespace.
            subnet: format!("10.213.{}", 100 + (std::process::id() + n) % 100),
            switch: switch.clone(),
            host_link: None,
            nodes: BTreeMap::new(),
            children: Vec::new(),
        };
        ip(&["netns", "add", &switch]);
        ip(&["-n", &switch, "link", "set", "lo", "up"]);
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        for (i, name) in names.iter().enumerate() {
            let ns = format!("{tag}-{name}");
            let octet = i as u8 + 1;
            // Registered first, so a failure below still cleans it up.
            lan.nodes.insert(name.to_string(), (ns.clone(), octet));
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            let port = format!("p{i}");
            ip(&[
                "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns",
                &switch,
            ]);
            ip(&["-n", &switch, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &switch, "link", "set", &port, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}.{octet}/24", lan.subnet),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        }
        lan.write_hosts();
        lan
    }

    fn hosts_file(ns: &str) -> PathBuf {
        Path::new("/etc/netns").join(ns).join("hosts")
    }

    /// Every node's hosts file, written in place (the file a running
    /// process sees is the one mounted when it started).
    fn write_hosts(&self) {
        let mut text = String::from("127.0.0.1 localhost\n");
        for (name, (_, octet)) in &self.nodes {
            text.push_str(&format!("{}.{octet} {name}\n", self.subnet));
        }
        for (ns, _) in self.nodes.values() {
            let path = Self::hosts_file(ns);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &text).unwrap();
        }
    }

    pub fn addr(&self, name: &str) -> String {
        format!("{}.{}", self.subnet, self.nodes[name].1)
    }

    /// Joins the test process's namespace to the bridge at `.254`, so
    /// it reaches every node at [`Lan::addr`].
    pub fn attach_host(&mut self) {
        let link = format!("{}h", self.tag);
        ip(&[
            "link",
            "add",
            &link,
            "type",
            "veth",
            "peer",
            "name",
            "host",
            "netns",
            &self.switch,
        ]);
        self.host_link = Some(link.clone());
        ip(&["-n", &self.switch, "link", "set", "host", "master", "br0"]);
        ip(&["-n", &self.switch, "link", "set", "host", "up"]);
        ip(&[
            "addr",
            "add",
            &format!("{}.254/24", self.subnet),
            "dev",
            &link,
        ]);
        ip(&["link", "set", &link, "up"]);
    }

    /// Degrades `name`'s sends: `loss_pct` % of its packets dropped, and
    /// `delay` ± `jitter` added with `tc netem` where the kernel has it
    /// (`sch_netem`). Where it does not, the loss is made with iptables'
    /// `statistic` match and no delay is added; returns whether the delay
    /// was. `None` clears it.
    pub fn degrade(&self, name: &str, link: Option<(&str, &str, &str)>) -> bool {
        let ns = &self.nodes[name].0;
        let run = |args: &[&str]| {
            Command::new("ip")
                .args(["netns", "exec", ns])
                .args(args)
                .output()
                .expect("tc or iptables")
        };
        let Some((delay, jitter, loss)) = link else {
            let _ = run(&["tc", "qdisc", "del", "dev", "eth0", "root"]);
            let _ = run(&["iptables", "-F", "OUTPUT"]);
            return false;
        };
        let netem = run(&[
            "tc",
            "qdisc",
            "replace",
            "dev",
            "eth0",
            "root",
            "netem",
            "delay",
            delay,
            jitter,
            "loss",
            &format!("{loss}%"),
        ]);
        if netem.status.success() {
            return true;
        }
        let probability = format!("{}", loss.parse::<f64>().expect("loss %") / 100.0);
        let out = run(&[
            "iptables",
            "-A",
            "OUTPUT",
            "-o",
            "eth0",
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &probability,
            "-j",
            "DROP",
        ]);
        assert!(
            out.status.success(),
            "neither tc netem ({}) nor iptables statistic ({}) on {name}",
            String::from_utf8_lossy(&netem.stderr).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        false
    }

    /// Drops every packet `name` sends to `to` (iptables in its
    /// namespace): cuts both ways for TCP, and with `to` the callers of a
    /// server in `name`, loses its answers while their requests arrive.
    pub fn block(&self, name: &str, to: &[&str]) {
        let ns = &self.nodes[name].0;
        for t in to {
            let addr = self.addr(t);
            let out = Command::new("ip")
                .args([
                    "netns", "exec", ns, "iptables", "-A", "OUTPUT", "-d", &addr, "-j", "DROP",
                ])
                .output()
                .expect("iptables");
            assert!(
                out.status.success(),
                "iptables in {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }

    /// Undoes [`Lan::block`] (and the loss of [`Lan::degrade`]) on `name`.
    pub fn unblock(&self, name: &str) {
        let ns = &self.nodes[name].0;
        let _ = Command::new("ip")
            .args(["netns", "exec", ns, "iptables", "-F", "OUTPUT"])
            .status();
    }

    /// Cuts `name` off the network (its interface down) or connects it
    /// again.
    pub fn set_link(&self, name: &str, up: bool) {
        let ns = &self.nodes[name].0;
        ip(&[
            "-n",
            ns,
            "link",
            "set",
            "eth0",
            if up { "up" } else { "down" },
        ]);
    }

    pub fn names(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    /// Moves `name` to a new address (`.octet`): the old one is removed
    /// from its interface (connections to and from it go silent) and the
    /// name points at the new one everywhere.
    pub fn move_node(&mut self, name: &str, octet: u8) {
        let (ns, old) = self.nodes[name].clone();
        // Removed first: removing an interface's primary address removes
        // the other addresses of its subnet with it.
        ip(&[
            "-n",
            &ns,
            "addr",
            "del",
            &format!("{}.{old}/24", self.subnet),
            "dev",
            "eth0",
        ]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}.{octet}/24", self.subnet),
            "dev",
            "eth0",
        ]);
        self.nodes.get_mut(name).unwrap().1 = octet;
        self.write_hosts();
    }

    /// A command run inside `name`'s namespace (`ip netns exec`).
    pub fn command(&self, name: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.nodes[name].0, program]);
        c
    }

    /// Starts `program args` with `env` in `name`'s namespace, its output
    /// in `log`; killed on drop.
    pub fn spawn(
        &mut self,
        name: &str,
        program: &str,
        args: &[&str],
        env: &[(String, String)],
        log: &Path,
    ) {
        let out = std::fs::File::create(log).unwrap();
        let child = self
            .command(name, program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program} in {name}: {e}"));
        self.children.push(child);
    }

    /// `GET http://127.0.0.1:{port}{path}` from inside `name`'s namespace
    /// (curl); `None` when nothing answers within 2 s or the status is not
    /// 200.
    pub fn get(&self, name: &str, port: u16, path: &str) -> Option<String> {
        self.fetch(name, port, path)
            .and_then(|(status, body)| (status == 200).then_some(body))
    }

    /// As [`Lan::get`], whatever the status: (status, body).
    pub fn fetch(&self, name: &str, port: u16, path: &str) -> Option<(u16, String)> {
        let out = self
            .command(name, "curl")
            .args([
                "-s",
                "--max-time",
                "2",
                "-w",
                "\n%{http_code}",
                &format!("http://127.0.0.1:{port}{path}"),
            ])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n')?;
        let status = status.trim().parse().ok().filter(|s| *s != 0)?;
        Some((status, body.to_string()))
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (ns, _) in self.nodes.values() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(ns));
        }
        if let Some(link) = &self.host_link {
            let _ = Command::new("ip").args(["link", "del", link]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.switch])
            .status();
    }
}
