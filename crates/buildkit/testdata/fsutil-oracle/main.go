// Command fsutil-oracle runs the Go code that buildctl v0.32.2 uses (moby/patternmatcher v0.6.1
// and tonistiigi/fsutil at the version BuildKit v0.32.2 vendors) so fastbuild's Rust
// re-implementation can be compared with it. It is a development tool: the Rust tests only read
// the data it produced (see ../patternmatcher-cases.jsonl); nothing builds it in CI.
//
//	fsutil-oracle patterns < cases.json > results.jsonl
//	fsutil-oracle walk DIR < opts.json   (opts: {"include":[..],"exclude":[..],"follow":[..]})
//
// Byte strings that are not UTF-8 are written as {"hex": "..."}.
package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/moby/patternmatcher"
	"github.com/tonistiigi/fsutil"
	"github.com/tonistiigi/fsutil/types"
)

// bstr is a byte string in JSON: a plain string, or {"hex": "..."} when not UTF-8.
type bstr string

func (b bstr) MarshalJSON() ([]byte, error) {
	if utf8.ValidString(string(b)) {
		return json.Marshal(string(b))
	}
	return json.Marshal(map[string]string{"hex": hex.EncodeToString([]byte(b))})
}

func (b *bstr) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err == nil {
		*b = bstr(s)
		return nil
	}
	var m map[string]string
	if err := json.Unmarshal(data, &m); err != nil {
		return err
	}
	raw, err := hex.DecodeString(m["hex"])
	if err != nil {
		return err
	}
	*b = bstr(raw)
	return nil
}

type caseIn struct {
	Name     string `json:"name"`
	Patterns []bstr `json:"patterns"`
	Paths    []bstr `json:"paths"`
	// Expected results copied from patternmatcher_test.go, when the case comes from there.
	GoTestPass *bool `json:"go_test_pass,omitempty"`
}

type pathResult struct {
	Path bstr `json:"path"`
	// true / false / "error"
	OrParent      any `json:"or_parent"`
	ParentResults any `json:"parent_results"`
}

type caseOut struct {
	caseIn
	NewErr  bool         `json:"new_err"`
	Results []pathResult `json:"results,omitempty"`
}

func result(m bool, err error) any {
	if err != nil {
		return "error"
	}
	return m
}

func runPatterns() error {
	var cases []caseIn
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		return err
	}
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	for _, c := range cases {
		ps := make([]string, len(c.Patterns))
		for i, p := range c.Patterns {
			ps[i] = string(p)
		}
		co := caseOut{caseIn: c}
		pm, err := patternmatcher.New(ps)
		if err != nil {
			co.NewErr = true
		} else {
			for _, p := range c.Paths {
				path := string(p)
				r := pathResult{Path: p}
				r.OrParent = result(pm.MatchesOrParentMatches(path))
				// The way fsutil's walker calls it: once per directory level, each level
				// with the result of its parent.
				var info patternmatcher.MatchInfo
				parts := strings.Split(path, "/")
				var m bool
				for i := range parts {
					m, info, err = pm.MatchesUsingParentResults(strings.Join(parts[:i+1], "/"), info)
					if err != nil {
						break
					}
				}
				r.ParentResults = result(m, err)
				co.Results = append(co.Results, r)
			}
		}
		line, err := json.Marshal(co)
		if err != nil {
			return err
		}
		out.Write(line)
		out.WriteString("\n")
	}
	return nil
}

type walkOpts struct {
	Include []bstr `json:"include"`
	Exclude []bstr `json:"exclude"`
	Follow  []bstr `json:"follow"`
}

func strs(b []bstr) []string {
	if b == nil {
		return nil
	}
	out := make([]string, len(b))
	for i, s := range b {
		out[i] = string(s)
	}
	return out
}

// stream is an in-memory fsutil.Stream: it records what the sender sends and, as the receiver,
// requests every file once the stats are done, then sends FIN.
type stream struct {
	mu       sync.Mutex
	sent     []*types.Packet
	statsEnd chan struct{}
	files    []uint32
	pending  map[uint32]bool
	allDone  chan struct{}
	step     int
}

func (s *stream) Context() context.Context { return context.Background() }

func (s *stream) SendMsg(m any) error {
	p := m.(*types.Packet)
	cp := p.CloneVT()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sent = append(s.sent, cp)
	switch p.Type {
	case types.PACKET_STAT:
		if p.Stat == nil {
			close(s.statsEnd)
		} else if p.Stat.Mode&uint32(os.ModeType) == 0 {
			s.files = append(s.files, uint32(len(s.sent)-1))
		}
	case types.PACKET_ERR:
		// The walk failed: let the receiver side go on to FIN.
		select {
		case <-s.statsEnd:
		default:
			close(s.statsEnd)
		}
	case types.PACKET_DATA:
		if len(p.Data) == 0 {
			delete(s.pending, p.ID)
			if len(s.pending) == 0 {
				close(s.allDone)
			}
		}
	}
	return nil
}

func (s *stream) RecvMsg(m any) error {
	p := m.(*types.Packet)
	if s.step == 0 {
		<-s.statsEnd
	}
	s.mu.Lock()
	// Stat IDs count STAT packets only; every packet before the end is a STAT.
	ids := s.files
	s.mu.Unlock()
	if s.step < len(ids) {
		*p = types.Packet{Type: types.PACKET_REQ, ID: ids[s.step]}
		s.step++
		return nil
	}
	if s.step == len(ids) {
		s.step++
		if len(ids) > 0 {
			<-s.allDone
		}
		*p = types.Packet{Type: types.PACKET_FIN}
		return nil
	}
	return io.EOF
}

type statOut struct {
	ID       int               `json:"id"`
	Path     bstr              `json:"path"`
	Mode     uint32            `json:"mode"`
	Size     int64             `json:"size"`
	Linkname bstr              `json:"linkname,omitempty"`
	UID      uint32            `json:"uid"`
	GID      uint32            `json:"gid"`
	Devmajor int64             `json:"devmajor,omitempty"`
	Devminor int64             `json:"devminor,omitempty"`
	Xattrs   map[string]string `json:"xattrs,omitempty"`
	ModTime  int64             `json:"mod_time"`
	// Content bytes sent for a requested file.
	Data *int `json:"data,omitempty"`
}

func runWalk(dir string) error {
	var opts walkOpts
	if err := json.NewDecoder(os.Stdin).Decode(&opts); err != nil {
		return err
	}
	base, err := fsutil.NewFS(dir)
	if err != nil {
		return err
	}
	// As buildctl: client/solve.go prepareSyncedFiles, then session/filesync handle().
	reset := func(_ string, st *types.Stat) fsutil.MapResult {
		st.Uid = 0
		st.Gid = 0
		return fsutil.MapResultKeep
	}
	mapped, err := fsutil.NewFilterFS(base, &fsutil.FilterOpt{Map: reset})
	if err != nil {
		return err
	}
	filtered, err := fsutil.NewFilterFS(mapped, &fsutil.FilterOpt{
		IncludePatterns: strs(opts.Include),
		ExcludePatterns: strs(opts.Exclude),
		FollowPaths:     strs(opts.Follow),
	})
	if err != nil {
		return err
	}
	s := &stream{statsEnd: make(chan struct{}), pending: map[uint32]bool{}, allDone: make(chan struct{})}
	sendErr := make(chan error, 1)
	go func() { sendErr <- fsutil.Send(context.Background(), s, filtered, nil) }()
	// Requests go out only after the stats end; mark them pending first.
	select {
	case <-s.statsEnd:
	case err := <-sendErr:
		fmt.Printf("SENDERR %v\n", err)
		return nil
	}
	s.mu.Lock()
	for _, id := range s.files {
		s.pending[id] = true
	}
	if len(s.files) == 0 {
		close(s.allDone)
	}
	s.mu.Unlock()
	err = <-sendErr
	var stats []*statOut
	for _, p := range s.sent {
		if p.Type == types.PACKET_STAT && p.Stat != nil {
			st := p.Stat
			o := &statOut{ID: len(stats), Path: bstr(st.Path), Mode: st.Mode, Size: st.Size, Linkname: bstr(st.Linkname),
				UID: st.Uid, GID: st.Gid, Devmajor: st.Devmajor, Devminor: st.Devminor, ModTime: st.ModTime}
			if len(st.Xattrs) > 0 {
				o.Xattrs = map[string]string{}
				for k, v := range st.Xattrs {
					o.Xattrs[k] = hex.EncodeToString(v)
				}
			}
			stats = append(stats, o)
		}
	}
	for _, p := range s.sent {
		if p.Type == types.PACKET_DATA {
			o := stats[p.ID]
			if o.Data == nil {
				o.Data = new(int)
			}
			*o.Data += len(p.Data)
		}
		if p.Type == types.PACKET_ERR {
			fmt.Printf("ERR %s\n", p.Data)
		}
	}
	enc := json.NewEncoder(os.Stdout)
	for _, o := range stats {
		if err := enc.Encode(o); err != nil {
			return err
		}
	}
	if err != nil {
		fmt.Printf("SENDERR %v\n", err)
	}
	return nil
}

func main() {
	var err error
	switch {
	case len(os.Args) == 2 && os.Args[1] == "patterns":
		err = runPatterns()
	case len(os.Args) == 3 && os.Args[1] == "walk":
		err = runWalk(os.Args[2])
	default:
		err = fmt.Errorf("usage: fsutil-oracle patterns | walk DIR")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
