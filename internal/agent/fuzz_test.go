package agent

import (
	"encoding/json"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// FuzzProcessDecoding feeds the agent's decoding of an exec request's
// process (what the host sends in ExecProcess) arbitrary JSON.
func FuzzProcessDecoding(f *testing.F) {
	f.Add([]byte(`{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0},"rlimits":[{"type":"RLIMIT_NOFILE","hard":1,"soft":1}]}`))
	f.Add([]byte(`{"args":[],"rlimits":[{"type":"RLIMIT_BOGUS"}]}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var p specs.Process
		if json.Unmarshal(data, &p) != nil {
			return
		}
		lp, err := libcontainerProcess(&p)
		if err == nil && len(lp.Args) == 0 {
			t.Fatal("accepted a process without args")
		}
	})
}

// FuzzParseCmdline: the kernel command line is the agent's first input.
func FuzzParseCmdline(f *testing.F) {
	f.Add("console=ttyS0 husk.msize=524288 husk.debug=1")
	f.Fuzz(func(t *testing.T, cmdline string) {
		p, err := ParseCmdline(cmdline)
		if err == nil && p.MSize < 4096 {
			t.Fatalf("accepted msize %d", p.MSize)
		}
	})
}
