package ova

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	dataLabel   = "continuum-data"
	runDir      = "/run/continuum"
	recheckWait = 30 * time.Second
)

// runAppliance is the appliance's life after init: it never returns before
// ctx ends, whatever goes wrong, so that the VM stays up for the admin.
func runAppliance(ctx context.Context, envFile string) error {
	console := openConsole()
	log := consoleLogger(console)
	version := strings.TrimSpace(readFileString("/etc/continuum-version"))
	log.Info("appliance starting", "version", version)
	_ = os.MkdirAll(runDir, 0o755)

	var cfg *Config
	lastReport := ""
	for {
		env, src, err := loadEnvironment(ctx, log, envFile)
		if err == nil {
			log.Info("OVF environment read", "transport", src, "properties", len(env.Properties))
			cfg, err = ParseConfig(env.Properties)
		}
		if err == nil {
			break
		}
		report := ProblemReport(err)
		if report != lastReport {
			// Shown once per distinct problem, so the console stays readable.
			fmt.Fprint(console, report)
			log.Error("role not started: configuration problem", "err", err)
			lastReport = report
		}
		_ = os.WriteFile(filepath.Join(runDir, "status"), []byte(report), 0o644)
		if !sleepCtx(ctx, recheckWait) {
			return ctx.Err()
		}
	}

	if err := setHostname(cfg.Hostname); err != nil {
		log.Warn("set hostname", "err", err)
	}
	mountData(ctx, log)
	ip := configureNetwork(ctx, log, cfg)
	if ip == nil {
		return ctx.Err()
	}
	if len(cfg.NTP) > 0 {
		go keepTime(ctx, log, cfg.NTP, 15*time.Minute, 500*time.Millisecond, func(off time.Duration) error {
			tv := syscall.NsecToTimeval(time.Now().Add(off).UnixNano())
			return syscall.Settimeofday(&tv)
		})
	}

	status := Banner(cfg, ip, version)
	fmt.Fprint(console, status)
	_ = os.WriteFile(filepath.Join(runDir, "status"), []byte(status), 0o644)

	if cfg.Role == roleProxy {
		dir := DataDir + "/proxy"
		addr := net.JoinHostPort(ip.String(), strconv.Itoa(cfg.APIPort))
		for ctx.Err() == nil {
			if _, err := os.Stat(filepath.Join(dir, "key.pem")); err == nil {
				break
			}
			err := fetchProxyMaterial(ctx, cfg, addr, dir)
			if err == nil {
				log.Info("proxy certificate obtained from the cluster", "join", cfg.JoinURL)
				break
			}
			log.Error("cannot obtain the proxy's certificate; retrying in 10 s", "err", err)
			sleepCtx(ctx, 10*time.Second)
		}
	}

	exe, err := os.Executable()
	if err != nil {
		exe = "/bin/continuum"
	}
	args := cfg.RoleArgs(ip)
	sup := &Supervisor{
		Name: "continuum " + cfg.Role, Log: log,
		MinBackoff: time.Second, MaxBackoff: 30 * time.Second, Healthy: time.Minute,
		Command: func(ctx context.Context) *exec.Cmd {
			c := exec.CommandContext(ctx, exe, args...)
			// At shutdown the role gets SIGTERM and time to leave raft cleanly.
			c.Cancel = func() error { return c.Process.Signal(syscall.SIGTERM) }
			c.WaitDelay = 15 * time.Second
			c.Stdout, c.Stderr = console, console
			c.Dir = DataDir
			return c
		},
	}
	if cfg.Role == roleCoordinator && cfg.Bootstrap {
		go showJoinToken(ctx, console, filepath.Join(DataDir, "coordinator", "join.token"), cfg, ip)
	}
	sup.Run(ctx)
	return ctx.Err()
}

// Banner is the console text once the role runs.
func Banner(cfg *Config, ip net.IP, version string) string {
	line := strings.Repeat("=", 72)
	var b strings.Builder
	fmt.Fprintf(&b, "\n%s\n Continuum appliance %s\n", line, version)
	fmt.Fprintf(&b, " role: %s", cfg.Role)
	if cfg.Role == roleProxy {
		fmt.Fprintf(&b, " (%s)", cfg.ProxyRole)
	}
	fmt.Fprintf(&b, "   node: %s   host: %s\n", cfg.NodeID, cfg.Hostname)
	mode := "DHCP"
	if !cfg.DHCP() {
		mode = "static"
	}
	fmt.Fprintf(&b, " address: %s (%s)\n", ip, mode)
	if cfg.Role == roleCoordinator {
		fmt.Fprintf(&b, " API: https://%s/\n", net.JoinHostPort(ip.String(), strconv.Itoa(cfg.APIPort)))
		if cfg.Bootstrap {
			fmt.Fprintf(&b, " new cluster: admin token in %s/coordinator/admin.token\n", DataDir)
		} else {
			fmt.Fprintf(&b, " joining: %s\n", cfg.JoinURL)
		}
	}
	fmt.Fprintf(&b, "%s\n", line)
	return b.String()
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

func readFileString(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// openConsole writes to init's console (the last console= of the kernel
// command line, a serial port here) and also to the first virtual
// terminal, which is what the vSphere console shows.
func openConsole() io.Writer {
	var w []io.Writer = []io.Writer{os.Stdout}
	consoles := slices.DeleteFunc(strings.Fields(readFileString("/proc/cmdline")), func(f string) bool { return !strings.HasPrefix(f, "console=") })
	last := ""
	if len(consoles) > 0 {
		last = strings.SplitN(strings.TrimPrefix(consoles[len(consoles)-1], "console="), ",", 2)[0]
	}
	if last != "tty0" && last != "tty1" {
		if f, err := os.OpenFile("/dev/tty1", os.O_WRONLY|syscall.O_NOCTTY, 0); err == nil {
			w = append(w, f)
		}
	}
	return io.MultiWriter(w...)
}

// loadEnvironment reads the OVF environment from the file given, else from
// the CD-ROM (ISO transport), else from guestinfo (VMware Tools transport).
func loadEnvironment(ctx context.Context, log *slog.Logger, envFile string) (*Environment, string, error) {
	if envFile != "" {
		data, err := os.ReadFile(envFile)
		if err != nil {
			return nil, "", fmt.Errorf("read OVF environment: %w", err)
		}
		env, err := ParseEnvironment(bytes.NewReader(data))
		return env, "file", err
	}
	// CD-ROM drives show up while their controller is probed; wait a little.
	var drives []string
	for i := 0; i < 20 && ctx.Err() == nil; i++ {
		drives, _ = filepath.Glob("/dev/sr[0-9]*")
		if len(drives) > 0 {
			break
		}
		sleepCtx(ctx, 250*time.Millisecond)
	}
	var why []string
	for _, dev := range drives {
		env, err := readISO(dev)
		if err == nil {
			return env, "iso " + dev, nil
		}
		if !errors.Is(err, ErrNoEnvironment) {
			// A document that is there but wrong is the admin's to fix.
			return nil, "", err
		}
		why = append(why, err.Error())
	}
	if len(drives) == 0 {
		why = append(why, "no CD-ROM drive")
	}
	if !isVMware("/sys/class/dmi/id/sys_vendor") {
		why = append(why, "guestinfo: "+errNoBackdoor.Error())
	} else if data, err := readGuestInfo("ovfEnv"); err != nil {
		why = append(why, "guestinfo: "+err.Error())
	} else {
		env, err := ParseEnvironment(bytes.NewReader(data))
		if err != nil {
			return nil, "", fmt.Errorf("guestinfo.ovfEnv: %w", err)
		}
		return env, "guestinfo", nil
	}
	return nil, "", fmt.Errorf("%w: %s", ErrNoEnvironment, strings.Join(why, "; "))
}

// readISO mounts a CD-ROM read-only and reads the environment from it.
func readISO(dev string) (*Environment, error) {
	dir := filepath.Join(runDir, "ovfenv")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := syscall.Mount(dev, dir, "iso9660", syscall.MS_RDONLY, ""); err != nil {
		// An empty drive fails to mount: that only means no environment.
		return nil, fmt.Errorf("%s: %w (mount: %v)", dev, ErrNoEnvironment, err)
	}
	defer syscall.Unmount(dir, 0)
	return readEnvDir(dir)
}

func setHostname(name string) error {
	if err := syscall.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("sethostname %s: %w", name, err)
	}
	_ = os.WriteFile("/etc/hostname", []byte(name+"\n"), 0o644)
	short := strings.SplitN(name, ".", 2)[0]
	hosts := fmt.Sprintf("127.0.0.1\tlocalhost\n127.0.1.1\t%s %s\n", name, short)
	return os.WriteFile("/etc/hosts", []byte(hosts), 0o644)
}

// mountData mounts the disk's data partition (found by its ext4 label) on
// DataDir; without it the state lives in memory, which the console says.
func mountData(ctx context.Context, log *slog.Logger) {
	_ = os.MkdirAll(DataDir, 0o755)
	for i := 0; i < 40 && ctx.Err() == nil; i++ {
		if dev := findLabel(dataLabel); dev != "" {
			if err := syscall.Mount(dev, DataDir, "ext4", syscall.MS_NOATIME, ""); err != nil {
				log.Error("mount data partition", "device", dev, "err", err)
				break
			}
			log.Info("data partition mounted", "device", dev, "dir", DataDir)
			return
		}
		sleepCtx(ctx, 250*time.Millisecond)
	}
	log.Warn("no data partition: state is kept in memory and lost at power-off", "label", dataLabel)
	_ = syscall.Mount("tmpfs", DataDir, "tmpfs", 0, "mode=0700")
}

// findLabel finds the block device holding an ext2/3/4 file system with
// this label.
func findLabel(label string) string {
	names, _ := os.ReadDir("/sys/class/block")
	for _, n := range names {
		dev := "/dev/" + n.Name()
		if ext4Label(dev) == label {
			return dev
		}
	}
	return ""
}

func ext4Label(dev string) string {
	f, err := os.Open(dev)
	if err != nil {
		return ""
	}
	defer f.Close()
	sb := make([]byte, 1024)
	if _, err := f.ReadAt(sb, 1024); err != nil {
		return ""
	}
	if sb[0x38] != 0x53 || sb[0x39] != 0xEF {
		return ""
	}
	return string(bytes.TrimRight(sb[0x78:0x88], "\x00"))
}

// configureNetwork applies the static address or runs DHCP, and returns the
// address the role listens on; it keeps trying until it has one.
func configureNetwork(ctx context.Context, log *slog.Logger, cfg *Config) net.IP {
	var ifname string
	for ctx.Err() == nil {
		if ifname = firstNIC(); ifname != "" {
			break
		}
		log.Error("no network interface yet; waiting")
		sleepCtx(ctx, 2*time.Second)
	}
	run := func(args ...string) error {
		out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
		}
		return nil
	}
	if err := run("ip", "link", "set", ifname, "up"); err != nil {
		log.Error("bring interface up", "err", err)
	}
	if !cfg.DHCP() {
		ones, _ := cfg.Mask.Size()
		for ctx.Err() == nil {
			err := run("ip", "-4", "addr", "flush", "dev", ifname)
			if err == nil {
				err = run("ip", "addr", "add", fmt.Sprintf("%s/%d", cfg.IP, ones), "dev", ifname)
			}
			if err == nil && cfg.Gateway != nil {
				err = run("ip", "route", "replace", "default", "via", cfg.Gateway.String(), "dev", ifname)
			}
			if err == nil {
				break
			}
			log.Error("configure static address; retrying", "interface", ifname, "err", err)
			sleepCtx(ctx, 5*time.Second)
		}
		var rc strings.Builder
		for _, d := range cfg.DNS {
			fmt.Fprintf(&rc, "nameserver %s\n", d)
		}
		_ = os.WriteFile("/etc/resolv.conf", []byte(rc.String()), 0o644)
		_ = os.WriteFile(filepath.Join(runDir, "static-dns"), nil, 0o644)
		log.Info("static address configured", "interface", ifname, "ip", cfg.IP, "prefix", ones, "gateway", cfg.Gateway)
		return cfg.IP
	}
	go (&Supervisor{Name: "udhcpc", Log: log, MinBackoff: time.Second, MaxBackoff: 30 * time.Second, Healthy: time.Minute,
		Command: func(ctx context.Context) *exec.Cmd {
			return exec.CommandContext(ctx, "udhcpc", "-f", "-i", ifname, "-s", "/etc/udhcpc.script", "-x", "hostname:"+cfg.Hostname, "-T", "2", "-A", "5")
		}}).Run(ctx)
	for waited := 0; ctx.Err() == nil; waited++ {
		if ip := ifaceIPv4(ifname); ip != nil {
			log.Info("DHCP address", "interface", ifname, "ip", ip)
			return ip
		}
		if waited > 0 && waited%60 == 0 {
			log.Error("no DHCP lease yet; still trying", "interface", ifname)
		}
		sleepCtx(ctx, 500*time.Millisecond)
	}
	return nil
}

// firstNIC is the first network interface backed by a device.
func firstNIC() string {
	names, _ := os.ReadDir("/sys/class/net")
	for _, n := range names {
		if _, err := os.Stat(filepath.Join("/sys/class/net", n.Name(), "device")); err == nil {
			return n.Name()
		}
	}
	return ""
}

func ifaceIPv4(name string) net.IP {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return nil
	}
	addrs, _ := ifi.Addrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
			return n.IP.To4()
		}
	}
	return nil
}

// showJoinToken puts the new cluster's join token on the console once the
// first node wrote it: the admin types it into the properties of the
// other nodes, and only the VM's console (an admin's) shows it.
func showJoinToken(ctx context.Context, console io.Writer, path string, cfg *Config, ip net.IP) {
	for ctx.Err() == nil {
		if b, err := os.ReadFile(path); err == nil && len(bytes.TrimSpace(b)) > 0 {
			fmt.Fprintf(console, "\n To add nodes, deploy them with\n   join address: https://%s\n   join token:   %s\n\n",
				net.JoinHostPort(ip.String(), strconv.Itoa(cfg.APIPort)), bytes.TrimSpace(b))
			return
		}
		sleepCtx(ctx, time.Second)
	}
}
