//! [`ClientEnv`]: throw-away state for the clients of one test, so tests running in parallel (and
//! whatever else runs on the machine) never share a login file, an image store or a config.
//!
//! Layout of the temp dir:
//! ```text
//! home/                 HOME
//! xdg/{config,data,cache,runtime}/   XDG_* dirs
//! tmp/                  TMPDIR (buildah/podman write big temp files there)
//! docker-config/        DOCKER_CONFIG
//! auth.json             REGISTRY_AUTH_FILE (podman, buildah, skopeo)
//! registries.conf       CONTAINERS_REGISTRIES_CONF: the registry under test marked insecure
//! storage.conf          CONTAINERS_STORAGE_CONF: vfs under storage/ (backstop; tools get flags too)
//! podman/{root,runroot,tmp}/   podman --root/--runroot/--tmpdir
//! buildah/{root,runroot}/      buildah --root/--runroot
//! helm/{config,cache,data}/    HELM_*_HOME
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

/// Environment variables removed from every client command: they would point a client at state
/// outside the test or send its traffic through a proxy (tests only talk to 127.0.0.0/8).
const SCRUBBED_VARS: &[&str] = &[
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "DOCKER_TLS_VERIFY",
    "DOCKER_CERT_PATH",
    "CONTAINERS_CONF",
    "CONTAINER_HOST",
    "CONTAINER_CONNECTION",
    "BUILDAH_ISOLATION",
    "HELM_REGISTRY_CONFIG",
    "HELM_REPOSITORY_CONFIG",
    "HELM_REPOSITORY_CACHE",
    "KUBECONFIG",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
];

/// Isolated client state for one test against the registry at `registry` (`127.0.0.1:PORT`).
pub struct ClientEnv {
    dir: tempfile::TempDir,
    registry: String,
}

impl ClientEnv {
    /// Creates the directories and config files for a test talking to `registry` (`127.0.0.1:PORT`).
    pub fn new(registry: &str) -> ClientEnv {
        let dir = tempfile::Builder::new()
            .prefix("wharf-client-")
            .tempdir()
            .unwrap();
        let root = dir.path();
        for sub in [
            "home",
            "xdg/config",
            "xdg/data",
            "xdg/cache",
            "xdg/runtime",
            "tmp",
            "docker-config",
            "podman/root",
            "podman/runroot",
            "podman/tmp",
            "buildah/root",
            "buildah/runroot",
            "helm/config",
            "helm/cache",
            "helm/data",
            "storage",
            "storage-run",
        ] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            root.join("xdg/runtime"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        std::fs::write(root.join("auth.json"), "{\"auths\":{}}\n").unwrap();
        std::fs::write(root.join("docker-config/config.json"), "{\"auths\":{}}\n").unwrap();
        std::fs::write(
            root.join("registries.conf"),
            format!(
                "unqualified-search-registries = []\n\
                 short-name-mode = \"permissive\"\n\n\
                 [[registry]]\n\
                 location = \"{registry}\"\n\
                 insecure = true\n"
            ),
        )
        .unwrap();
        std::fs::write(
            root.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                root.join("storage").display(),
                root.join("storage-run").display()
            ),
        )
        .unwrap();
        ClientEnv {
            dir,
            registry: registry.to_string(),
        }
    }

    /// Root of this environment's temp dir.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `self.path().join(rel)`.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The registry host this env was made for (`127.0.0.1:PORT`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// `REGISTRY_AUTH_FILE` of this env.
    pub fn auth_file(&self) -> PathBuf {
        self.join("auth.json")
    }

    /// `CONTAINERS_REGISTRIES_CONF` of this env (registry under test marked insecure).
    pub fn registries_conf(&self) -> PathBuf {
        self.join("registries.conf")
    }

    /// A command for `program` with this env's HOME, XDG dirs, TMPDIR and client config files.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        for var in SCRUBBED_VARS {
            cmd.env_remove(var);
        }
        let r = self.path();
        cmd.current_dir(r)
            .env("HOME", r.join("home"))
            .env("XDG_CONFIG_HOME", r.join("xdg/config"))
            .env("XDG_DATA_HOME", r.join("xdg/data"))
            .env("XDG_CACHE_HOME", r.join("xdg/cache"))
            .env("XDG_RUNTIME_DIR", r.join("xdg/runtime"))
            .env("TMPDIR", r.join("tmp"))
            .env("DOCKER_CONFIG", r.join("docker-config"))
            .env("REGISTRY_AUTH_FILE", self.auth_file())
            .env("CONTAINERS_REGISTRIES_CONF", self.registries_conf())
            .env("CONTAINERS_STORAGE_CONF", r.join("storage.conf"))
            .env("HELM_CONFIG_HOME", r.join("helm/config"))
            .env("HELM_CACHE_HOME", r.join("helm/cache"))
            .env("HELM_DATA_HOME", r.join("helm/data"))
            .env("NO_PROXY", "127.0.0.0/8,localhost")
            .env("no_proxy", "127.0.0.0/8,localhost");
        cmd
    }

    /// `skopeo --registries-conf <ours>` (skopeo 1.9 ignores `CONTAINERS_REGISTRIES_CONF`). TLS is still
    /// to be disabled per command (`--tls-verify=false` etc.).
    pub fn skopeo(&self) -> Command {
        let bin = crate::require_tool(
            "skopeo",
            "apt-get install -y --no-install-recommends skopeo",
        );
        let mut cmd = self.command(bin);
        cmd.arg("--registries-conf").arg(self.registries_conf());
        cmd
    }

    /// `podman` with its own vfs storage (`--root/--runroot/--tmpdir`), no systemd needed.
    pub fn podman(&self) -> Command {
        let bin = crate::require_tool(
            "podman",
            "apt-get install -y --no-install-recommends podman",
        );
        let mut cmd = self.command(bin);
        cmd.arg("--root")
            .arg(self.join("podman/root"))
            .arg("--runroot")
            .arg(self.join("podman/runroot"))
            .arg("--tmpdir")
            .arg(self.join("podman/tmp"))
            .arg("--storage-driver")
            .arg("vfs")
            .arg("--cgroup-manager")
            .arg("cgroupfs")
            .arg("--events-backend")
            .arg("file");
        cmd
    }

    /// `buildah --storage-driver vfs` with its own `--root/--runroot`.
    pub fn buildah(&self) -> Command {
        let bin = crate::require_tool(
            "buildah",
            "apt-get install -y --no-install-recommends buildah",
        );
        let mut cmd = self.command(bin);
        cmd.arg("--root")
            .arg(self.join("buildah/root"))
            .arg("--runroot")
            .arg(self.join("buildah/runroot"))
            .arg("--storage-driver")
            .arg("vfs");
        cmd
    }

    /// helm 3 or 4 (see [`crate::helm_bin`]) with this env's HOME and HELM_* dirs.
    pub fn helm(&self, major: u32) -> Command {
        self.command(crate::helm_bin(major))
    }

    /// `curl` with this env (proxies off).
    pub fn curl(&self) -> Command {
        let bin = crate::require_tool("curl", "apt-get install -y --no-install-recommends curl");
        let mut cmd = self.command(bin);
        cmd.arg("--noproxy").arg("*");
        cmd
    }
}
