package test

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/s2"

	"github.com/continuum-cdp/continuum/filter/source"
	"github.com/continuum-cdp/continuum/internal/wire"
	"github.com/continuum-cdp/continuum/proxy"
)

// mixedCorpus is a third zeroes, a third text and a third random bytes, in
// 64 KiB blocks.
func mixedCorpus(n int) []byte {
	r := rand.New(rand.NewPCG(11, 12))
	words := strings.Fields("the quick brown fox jumps over the lazy dog replication journal point extent block sequence proxy filter target source datastore")
	b := make([]byte, n)
	for off := 0; off < n; off += 64 << 10 {
		blk := b[off:min(n, off+64<<10)]
		switch (off / (64 << 10)) % 3 {
		case 1:
			var sb strings.Builder
			for sb.Len() < len(blk) {
				sb.WriteString(words[r.IntN(len(words))])
				sb.WriteByte(' ')
			}
			copy(blk, sb.String())
		case 2:
			fillRandom(r, blk)
		}
	}
	return b
}

// naiveBaseline is the reference pipeline in one process: compress each
// 1 MiB with s2, send over loopback TCP, decompress, append to a file and
// fsync every 8 MiB. It returns MB/s and the CPU seconds it took (this
// process's, which runs nothing else meanwhile).
func naiveBaseline(b *testing.B, corpus []byte, total int, dir string) (mbs, cpu float64) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	f, err := os.Create(filepath.Join(dir, "baseline.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	recvErr := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			recvErr <- err
			return
		}
		defer c.Close()
		br := bufio.NewReaderSize(c, 1<<20)
		var hdr [4]byte
		var buf, out []byte
		since := 0
		for {
			if _, err := io.ReadFull(br, hdr[:]); err != nil {
				recvErr <- nil
				return
			}
			n := int(binary.BigEndian.Uint32(hdr[:]))
			if cap(buf) < n {
				buf = make([]byte, n)
			}
			buf = buf[:n]
			if _, err := io.ReadFull(br, buf); err != nil {
				recvErr <- err
				return
			}
			if out, err = s2.Decode(out[:cap(out)], buf); err != nil {
				recvErr <- err
				return
			}
			if _, err := f.Write(out); err != nil {
				recvErr <- err
				return
			}
			if since += len(out); since >= 8<<20 {
				f.Sync()
				since = 0
			}
		}
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	cpu0 := selfCPU()
	start := time.Now()
	bw := bufio.NewWriterSize(c, 1<<20)
	var enc []byte
	for off := 0; off < total; off += 1 << 20 {
		p := corpus[off%len(corpus) : off%len(corpus)+1<<20]
		enc = s2.Encode(enc[:cap(enc)], p)
		var hdr [4]byte
		binary.BigEndian.PutUint32(hdr[:], uint32(len(enc)))
		bw.Write(hdr[:])
		bw.Write(enc)
	}
	bw.Flush()
	c.Close()
	if err := <-recvErr; err != nil {
		b.Fatal(err)
	}
	f.Sync()
	return float64(total) / 1e6 / time.Since(start).Seconds(), selfCPU() - cpu0
}

// selfCPU reads this process's user+system CPU time.
func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// runCPU runs a command like run and returns the CPU seconds it used.
func runCPU(t testing.TB, name string, args ...string) float64 {
	t.Helper()
	_, st := runState(t, name, args...)
	return (st.UserTime() + st.SystemTime()).Seconds()
}

// peakRSS reads a process's peak resident set (VmHWM) in MB.
func peakRSS(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			kb, _ := strconv.ParseFloat(strings.Fields(line)[1], 64)
			return kb / 1024
		}
	}
	return 0
}

// procStat reads field i of /proc/PID/stat, counted from the state after
// the command name (0 on error).
func procStat(pid, i int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if i >= len(f) {
		return 0
	}
	v, _ := strconv.ParseFloat(f[i], 64)
	return v
}

// cpuSeconds reads a process's user+system CPU time.
func cpuSeconds(pid int) float64 { return (procStat(pid, 11) + procStat(pid, 12)) / 100 }

// minorFaults reads a process's minor page faults: on this kind of VM a
// page touched for the first time costs far more than its copy.
func minorFaults(pid int) float64 { return procStat(pid, 7) }

// machineIdle reads the seconds all CPUs were idle, and idle waiting for
// I/O.
func machineIdle() (idle, iowait float64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait ...
	if len(f) < 6 {
		return 0, 0
	}
	idle, _ = strconv.ParseFloat(f[4], 64)
	iowait, _ = strconv.ParseFloat(f[5], 64)
	return idle / 100, iowait / 100
}

// diskBusy reads the seconds the busiest block device had I/O in flight.
func diskBusy() float64 {
	b, err := os.ReadFile("/proc/diskstats")
	if err != nil {
		return 0
	}
	var most float64
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 13 || strings.HasPrefix(f[2], "loop") || strings.HasPrefix(f[2], "ram") {
			continue
		}
		ms, _ := strconv.ParseFloat(f[12], 64) // io_ticks
		most = max(most, ms/1000)
	}
	return most
}

// contextSwitches sums the voluntary and involuntary context switches of
// all a process's threads.
func contextSwitches(pid int) float64 {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	var n float64
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, t.Name()))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasSuffix(strings.SplitN(line, ":", 2)[0], "ctxt_switches") {
				v, _ := strconv.ParseFloat(strings.TrimSpace(strings.SplitN(line, ":", 2)[1]), 64)
				n += v
			}
		}
	}
	return n
}

// durableWatch polls how many 1 MiB writes of a run are durable and notes
// when 90% of them were: the run's sustained rate, without the last
// interval's wait for its RPO cut (that wait is the lag, measured apart).
type durableWatch struct {
	done chan struct{}
	t90  chan time.Duration
}

func watchDurable(start time.Time, writes uint64, acked func() uint64) *durableWatch {
	w := &durableWatch{done: make(chan struct{}), t90: make(chan time.Duration, 1)}
	go func() {
		want := writes * 9 / 10
		for {
			if acked() >= want {
				w.t90 <- time.Since(start)
				return
			}
			select {
			case <-w.done:
				w.t90 <- 0
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	return w
}

// rate stops the watch and returns 90% of total bytes over the time they
// took to be durable, in MB/s.
func (w *durableWatch) rate(total int) float64 {
	close(w.done)
	t := <-w.t90
	if t <= 0 {
		return 0
	}
	return float64(total) * 0.9 / 1e6 / t.Seconds()
}

// median of a few values (the upper one of an even count)
func median(v []float64) float64 {
	c := slices.Clone(v)
	sort.Float64s(c)
	return c[len(c)/2]
}

func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	sort.Float64s(v)
	return v[min(len(v)-1, int(p*float64(len(v))))]
}

// BenchmarkDatapathEndToEnd measures, in one run on this machine, the
// naive baseline, then guest writes end to end through separate processes
// (source filter → source proxy → target proxy → target filter journal,
// TLS, fsync on, s2) with fio over NBD and with an in-process generator,
// the write-to-durable lag under a paced load with a 1 s RPO, and each
// process's peak memory.
//
// Throughput is reported two ways: sustained (90% of the bytes over the
// time until they were durable, after a short unmeasured warm-up burst)
// and for the whole burst, whose last interval, below --cut-bytes, waits
// for its RPO cut: that wait is lag, not throughput, and is up to one RPO.
// Three rounds of baseline, fio and generator run back to back; each
// round's ratios are taken against its own baseline and the medians are
// reported.
//
// On disk, the baseline writes each byte once while the data path writes it
// at least twice on the same device (the source disk and the journal); on
// tmpfs the device is out of the way and the pipeline itself is measured.
//
// Each runs twice: with TLS on every hop ("tls"), and with a traffic rule
// that lets the hops between the host filters and the proxies carry
// integrity frames ("integrity": data in clear, every frame authenticated;
// the hop between the proxies stays TLS).
//
// The disk runs come first: a tmpfs run frees gigabytes that this kind of
// VM hands back to its host, and memory touched afterwards faults in
// slowly.
func BenchmarkDatapathEndToEnd(b *testing.B) {
	links := []string{"tls", "integrity"}
	for _, l := range links {
		b.Run("disk/"+l, func(b *testing.B) { benchDatapath(b, b.TempDir(), l == "integrity") })
	}
	for _, l := range links {
		b.Run("tmpfs/"+l, func(b *testing.B) {
			if st, err := os.Stat("/dev/shm"); err != nil || !st.IsDir() {
				b.Skip("no /dev/shm")
			}
			dir, err := os.MkdirTemp("/dev/shm", "continuum-bench-")
			if err != nil {
				b.Skip(err)
			}
			defer os.RemoveAll(dir)
			benchDatapath(b, dir, l == "integrity")
		})
	}
}

func benchDatapath(b *testing.B, dir string, hostIntegrity bool) {
	needTools(b, "fio")
	const total = 512 << 20
	corpus := mixedCorpus(64 << 20)
	vms := []source.VMConfig{{Name: "bench", Disks: []source.DiskConfig{{Key: 2000, Capacity: 1 << 30}}}}
	for i := 0; i < b.N; i++ {
		ddir := filepath.Join(dir, fmt.Sprintf("run%d", i))
		d := startDatapath(b, dpOptions{rpo: time.Second, grace: 30 * time.Second, vms: vms, logLevel: "warn", dir: ddir, hostIntegrity: hostIntegrity})
		link := "tls"
		if hostIntegrity {
			link = "integrity"
		}
		d.checkLinks(link)

		// CPU seconds of each data-path process per phase: where the
		// time goes, as the throughput is bound by the two cores
		procs := []*proc{d.sfilter, d.sproxy, d.tproxy, d.tfilter}
		type usage struct{ cpu, faults, switches, idle, iowait, diskBusy float64 }
		cpu := func() []usage {
			out := make([]usage, len(procs))
			for i, p := range procs {
				pid := p.cmd.Process.Pid
				out[i] = usage{cpu: cpuSeconds(pid), faults: minorFaults(pid), switches: contextSwitches(pid)}
			}
			out[0].idle, out[0].iowait = machineIdle()
			out[0].diskBusy = diskBusy()
			return out
		}
		logCPU := func(phase string, before []usage, el time.Duration) (sum float64) {
			after := cpu()
			for i := range after {
				after[i].cpu -= before[i].cpu
				after[i].faults -= before[i].faults
				after[i].switches -= before[i].switches
				sum += after[i].cpu
			}
			idle := (after[0].idle - before[0].idle) / el.Seconds() / 2
			iowait := (after[0].iowait - before[0].iowait) / el.Seconds() / 2
			busy := (after[0].diskBusy - before[0].diskBusy) / el.Seconds()
			b.Logf("%s: %.1fs, CPU seconds: source filter %.1f, source proxy %.1f, target proxy %.1f, target filter %.1f (%.0f%% of two cores)",
				phase, el.Seconds(), after[0].cpu, after[1].cpu, after[2].cpu, after[3].cpu, 100*sum/el.Seconds()/2)
			b.Logf("%s: machine idle %.0f%%, waiting for I/O %.0f%%, disk busy %.0f%%; page faults (thousands) %.0f, %.0f, %.0f, %.0f; context switches (thousands) %.0f, %.0f, %.0f, %.0f",
				phase, 100*idle, 100*iowait, 100*busy, after[0].faults/1e3, after[1].faults/1e3, after[2].faults/1e3, after[3].faults/1e3,
				after[0].switches/1e3, after[1].switches/1e3, after[2].switches/1e3, after[3].switches/1e3)
			return sum
		}

		// A running appliance's processes have warm buffers; fresh ones
		// fault in every page they touch first (slow on this kind of VM).
		// A short unmeasured burst at the end of the disk, of the same
		// writes as the measured runs (so the same sizes of points and
		// frames), warms them.
		fioArgs := func(name string, extra ...string) []string {
			return append([]string{"--name=" + name, "--ioengine=nbd", "--uri=" + d.uri("bench", 2000), "--rw=write", "--bs=1M",
				"--iodepth=8", "--buffer_compress_percentage=50", "--refill_buffers"}, extra...)
		}
		run(b, "fio", fioArgs("warm", "--offset=896M", "--size=128M")...)
		d.waitQuiet(5 * time.Minute)

		// fio through NBD: sequential 1 MiB writes, half compressible. The
		// first run writes blocks of the sparse source disk for the first
		// time, the second writes them again: a protected disk's steady
		// state, and the figure that counts. A first write allocates the
		// file's blocks, and the file system serializes allocating writes.
		// It also returns the CPU seconds of the four processes and of fio.
		fioRun := func(phase string) (mbs, sustained, pathCPU, fioCPU float64) {
			cpu0 := cpu()
			seq0 := d.status()[0].Seq
			start := time.Now()
			fw := watchDurable(start, total>>20, func() uint64 {
				var st []filterStatus
				if err := getJSON(b, "http://"+d.sfAdmin+"/v1/status", &st); err != nil || len(st) == 0 {
					return 0
				}
				return st[0].Acked - min(st[0].Acked, seq0)
			})
			st0 := d.status()[0]
			fioCPU = runCPU(b, "fio", fioArgs("w", fmt.Sprintf("--size=%d", total))...)
			fst := d.waitQuiet(5 * time.Minute)
			mbs = float64(total) / 1e6 / time.Since(start).Seconds()
			sustained = fw.rate(total)
			pathCPU = logCPU(phase, cpu0, time.Since(start))
			if st := fst[0]; st.CBTEntries > st0.CBTEntries {
				b.Logf("%s: the VM entered CBT mode %d times", phase, st.CBTEntries-st0.CBTEntries)
			}
			if st := fst[0]; st.ThrottledWrites > st0.ThrottledWrites {
				b.Logf("%s: %d writes waited %.2fs in all for room in the filter's buffer", phase,
					st.ThrottledWrites-st0.ThrottledWrites, st.ThrottledSeconds-st0.ThrottledSeconds)
			}
			return mbs, sustained, pathCPU, fioCPU
		}
		_, fioFirst90, _, _ := fioRun("fio, first writes")

		// in-process generator into the same proxies
		tlsCfg, err := proxy.TLSConfig(filepath.Join(d.certs, "cert.pem"), filepath.Join(d.certs, "key.pem"), filepath.Join(d.certs, "ca.pem"))
		if err != nil {
			b.Fatal(err)
		}
		type sample struct {
			seq uint64
			at  time.Time
		}
		var smu sync.Mutex
		var samples []sample
		svc, err := source.New(source.Options{
			Datastore: filepath.Join(d.dir, "gen"), BufferBytes: 512 << 20,
			VMs: []source.VMConfig{{Name: "gen", Disks: []source.DiskConfig{{Key: 2000, Capacity: 1 << 30}}}},
			Dial: func(ctx context.Context) (net.Conn, error) {
				return wire.DialTLS(ctx, nil, d.spData, tlsCfg) // as the filter process dials
			},
			OnStamp: func(s source.Stamp) {
				smu.Lock()
				samples = append(samples, sample{s.Seq, time.Now()})
				smu.Unlock()
			},
		})
		if err != nil {
			b.Fatal(err)
		}
		if err := svc.Start(context.Background()); err != nil {
			b.Fatal(err)
		}
		genQuiet := func() {
			deadline := time.Now().Add(5 * time.Minute)
			for {
				st := svc.Status()[0]
				if st.Mode == "syncing" && st.Acked == st.Seq && st.BufferEntries == 0 {
					return
				}
				if time.Now().After(deadline) {
					b.Fatalf("generator VM not quiet: %+v", st)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		genQuiet()
		disk := svc.Disks()[0]
		for off := int64(0); off < total; off += 1 << 20 { // warm-up, as for fio
			if err := disk.WriteAt(corpus[:1<<20], off, false); err != nil {
				b.Fatal(err)
			}
		}
		genQuiet()
		genRun := func() (mbs, sustained float64) {
			st0 := svc.Status()[0]
			cpu0 := cpu()
			start := time.Now()
			gw := watchDurable(start, total>>20, func() uint64 {
				a := svc.Status()[0].Acked
				return a - min(a, st0.Seq)
			})
			for off := 0; off < total; off += 1 << 20 {
				p := corpus[off%len(corpus) : off%len(corpus)+1<<20]
				if err := disk.WriteAt(p, int64(off), false); err != nil {
					b.Fatal(err)
				}
			}
			writePhase := time.Since(start)
			genQuiet()
			b.Logf("generator: writes took %s, durable after %s", writePhase.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
			mbs = float64(total) / 1e6 / time.Since(start).Seconds()
			sustained = gw.rate(total)
			logCPU("generator", cpu0, time.Since(start))
			if st := svc.Status()[0]; st.CBTEntries > st0.CBTEntries {
				b.Logf("generator VM entered CBT mode %d times", st.CBTEntries-st0.CBTEntries)
			}
			if st := svc.Status()[0]; st.ThrottledWrites > st0.ThrottledWrites {
				b.Logf("generator: %d writes waited %.2fs in all for room in the buffer", st.ThrottledWrites-st0.ThrottledWrites, st.ThrottledSeconds-st0.ThrottledSeconds)
			}
			return mbs, sustained
		}

		// Rounds of baseline, fio and generator: the machine (its disk,
		// the host's memory, its neighbours) changes from one second to
		// the next, so each round's pipeline figures are set against the
		// baseline measured right before them, and the median round
		// counts. CPU per byte explains the ratios: the fio phase's
		// processes (fio, the four of the data path) share this machine's
		// cores, so its throughput cannot exceed what those cores give at
		// the CPU the phase spent per byte (its ceiling), whatever the
		// pipeline's concurrency.
		const rounds = 3
		const gib = 1 << 30
		var bases, fioR, genR, fioMBs, fio90s, genMBs, gen90s, baseCPUs, fioPhaseCPUs, ceilings []float64
		// An unmeasured baseline first: the first one after the phases
		// above puts its 512 MiB into memory this VM's host has taken back
		// and ran at a third of the later ones' speed, at three times
		// their CPU per byte; each later baseline reuses the pages its
		// predecessor's file freed.
		warmMBs, warmCPU := naiveBaseline(b, corpus, total, dir)
		b.Logf("warm-up baseline: %.0f MB/s, %.1f CPU seconds per GiB", warmMBs, warmCPU*gib/total)
		for r := 0; r < rounds; r++ {
			base, baseCPU := naiveBaseline(b, corpus, total, dir)
			fm, f90, pathCPU, fioCPU := fioRun(fmt.Sprintf("fio (round %d)", r+1))
			gm, g90 := genRun()
			ceiling := float64(runtime.NumCPU()) * total / 1e6 / (pathCPU + fioCPU)
			b.Logf("round %d: baseline %.0f MB/s, fio %.0f MB/s (%.2fx), generator %.0f MB/s (%.2fx)", r+1, base, f90, f90/base, g90, g90/base)
			b.Logf("round %d: CPU seconds per GiB: baseline %.1f; fio phase %.1f (data path %.1f, fio %.1f): %.1fx the baseline's; with all %d cores busy it could reach %.0f MB/s (%.2fx the baseline)",
				r+1, baseCPU*gib/total, (pathCPU+fioCPU)*gib/total, pathCPU*gib/total, fioCPU*gib/total, (pathCPU+fioCPU)/baseCPU, runtime.NumCPU(), ceiling, ceiling/base)
			bases, fioMBs, fio90s, genMBs, gen90s = append(bases, base), append(fioMBs, fm), append(fio90s, f90), append(genMBs, gm), append(gen90s, g90)
			fioR, genR = append(fioR, f90/base), append(genR, g90/base)
			baseCPUs, fioPhaseCPUs, ceilings = append(baseCPUs, baseCPU*gib/total), append(fioPhaseCPUs, (pathCPU+fioCPU)*gib/total), append(ceilings, ceiling/base)
		}
		base := median(bases)

		// lag under a paced load: 100 MB/s of 1 MiB writes for 4 s
		smu.Lock()
		samples = samples[:0]
		smu.Unlock()
		var lags []float64
		stopPoll := make(chan struct{})
		pollDone := make(chan struct{})
		go func() {
			defer close(pollDone)
			next := 0
			for {
				select {
				case <-stopPoll:
					return
				case <-time.After(2 * time.Millisecond):
				}
				acked := svc.Status()[0].Acked
				now := time.Now()
				smu.Lock()
				for next < len(samples) && samples[next].seq <= acked {
					lags = append(lags, now.Sub(samples[next].at).Seconds())
					next++
				}
				smu.Unlock()
			}
		}()
		const rate = 100e6
		cpu0 := cpu()
		start := time.Now()
		written := 0
		for time.Since(start) < 4*time.Second {
			want := int(time.Since(start).Seconds() * rate)
			for written < want {
				off := written % (512 << 20)
				if err := disk.WriteAt(corpus[written%(63<<20):written%(63<<20)+1<<20], int64(off), false); err != nil {
					b.Fatal(err)
				}
				written += 1 << 20
			}
			time.Sleep(time.Millisecond)
		}
		paced := float64(written) / 1e6 / time.Since(start).Seconds()
		genQuiet()
		logCPU("paced", cpu0, time.Since(start))
		time.Sleep(20 * time.Millisecond)
		close(stopPoll)
		<-pollDone

		rssSF := peakRSS(d.sfilter.cmd.Process.Pid)
		rssSP := peakRSS(d.sproxy.cmd.Process.Pid)
		rssTP := peakRSS(d.tproxy.cmd.Process.Pid)
		rssTF := peakRSS(d.tfilter.cmd.Process.Pid)
		b.Logf("CPU seconds: source filter %.1f, source proxy %.1f, target proxy %.1f, target filter %.1f",
			cpuSeconds(d.sfilter.cmd.Process.Pid), cpuSeconds(d.sproxy.cmd.Process.Pid), cpuSeconds(d.tproxy.cmd.Process.Pid), cpuSeconds(d.tfilter.cmd.Process.Pid))
		svc.Close()
		for _, p := range []*proc{d.sfilter, d.sproxy, d.tproxy, d.tfilter} {
			p.kill()
		}
		os.RemoveAll(ddir)

		b.ReportMetric(base, "baseline-MB/s")
		b.ReportMetric(slices.Max(bases)/slices.Min(bases), "baseline-max/min")
		b.ReportMetric(median(fioMBs), "fio-MB/s")
		b.ReportMetric(median(genMBs), "gen-MB/s")
		b.ReportMetric(median(fio90s), "fio-sustained-MB/s")
		b.ReportMetric(median(gen90s), "gen-sustained-MB/s")
		b.ReportMetric(median(fioR), "fio-sustained/baseline")
		b.ReportMetric(fioFirst90/base, "fio-first-writes-sustained/baseline")
		b.ReportMetric(median(genR), "gen-sustained/baseline")
		b.ReportMetric(median(baseCPUs), "baseline-cpu-s/GiB")
		b.ReportMetric(median(fioPhaseCPUs), "fio-phase-cpu-s/GiB")
		b.ReportMetric(median(ceilings), "fio-cpu-ceiling/baseline")
		b.ReportMetric(percentile(lags, 0.5), "lag-p50-s")
		b.ReportMetric(percentile(lags, 0.99), "lag-p99-s")
		b.ReportMetric(rssSF, "rss-source-filter-MB")
		b.ReportMetric(rssSP, "rss-source-proxy-MB")
		b.ReportMetric(rssTP, "rss-target-proxy-MB")
		b.ReportMetric(rssTF, "rss-target-filter-MB")
		b.Logf("medians of %d rounds: baseline %.0f MB/s; sustained (90%% durable): fio %.0f MB/s (%.2fx), generator %.0f MB/s (%.2fx); whole burst incl. the last RPO cut: fio %.0f MB/s, generator %.0f MB/s; paced %.0f MB/s lag p50 %.3fs p99 %.3fs (%d samples); peak RSS MB: source filter %.0f, source proxy %.0f, target proxy %.0f, target filter %.0f",
			rounds, base, median(fio90s), median(fioR), median(gen90s), median(genR), median(fioMBs), median(genMBs), paced, percentile(lags, 0.5), percentile(lags, 0.99), len(lags), rssSF, rssSP, rssTP, rssTF)
	}
}
