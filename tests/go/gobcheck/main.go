// Command gobcheck writes and reads gob streams of a stand-in for gorgonia's *tensor.Dense.
//
// It uses only the standard library. Dense mirrors the parts of gorgonia.org/tensor that gob sees:
// the embedded AP struct (whose only exported field is Δ) and a GobEncode/GobDecode pair that run a
// fresh inner encoder over shape, strides, data order, triangle, mask and the data interface, in
// that order (formats.md 3.1/3.4). It must be the first gob user in the process so that type ids
// start at 65, as they do in a real gorgonia program.
//
//	gobcheck write CASE OUT             write fixture CASE (mixed, types, masked, view, shifted)
//	gobcheck decode FILE N TYPE...      decode N Dense values then trailing values of the given
//	                                    types (int, uint, float64, string, bool, []int, []string,
//	                                    []float64, names) and print them as JSON; the type eof
//	                                    asserts that the stream ends there
package main

import (
	"bytes"
	"encoding/gob"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"reflect"
	"strconv"
)

type Triangle byte
type DataOrder byte
type Shape []int

type AP struct {
	shape   Shape
	strides []int
	fin     bool
	o       DataOrder
	Δ       Triangle
}

type Dense struct {
	AP
	data interface{}
	mask []bool
}

func (t *Dense) GobEncode() ([]byte, error) {
	var buf bytes.Buffer
	enc := gob.NewEncoder(&buf)
	for _, v := range []interface{}{t.shape, t.strides, t.o, t.Δ, t.mask, &t.data} {
		if err := enc.Encode(v); err != nil {
			return nil, err
		}
	}
	return buf.Bytes(), nil
}

func (t *Dense) GobDecode(p []byte) error {
	dec := gob.NewDecoder(bytes.NewReader(p))
	for _, v := range []interface{}{&t.shape, &t.strides, &t.o, &t.Δ, &t.mask, &t.data} {
		if err := dec.Decode(v); err != nil {
			return err
		}
	}
	return nil
}

// WeightVaultNames is the optional trailing value weightvault writes with the tensor names.
type WeightVaultNames struct {
	Names []string
}

func dense(shape []int, strides []int, o DataOrder, data interface{}) *Dense {
	d := &Dense{data: data}
	d.shape, d.strides, d.o = Shape(shape), strides, o
	return d
}

func fixture(name string) []interface{} {
	switch name {
	case "mixed", "shifted":
		a := make([]float32, 12) // 3x4, column-major: A[i][j] = i + j/8 - 0.75
		for i := 0; i < 3; i++ {
			for j := 0; j < 4; j++ {
				a[j*3+i] = float32(i) + float32(j)/8 - 0.75
			}
		}
		b := make([]int, 6) // 2x3 row-major: B[i][j] = (3i+j)*1000 - 2500
		for k := range b {
			b[k] = k*1000 - 2500
		}
		c := []bool{true, false, true, false, true}
		return []interface{}{
			dense([]int{3, 4}, []int{1, 3}, 1, a),
			dense([]int{2, 3}, []int{3, 1}, 0, b),
			dense([]int{5}, []int{1}, 0, c),
			7, 2.5, "hello", []int{1, -2, 300},
		}
	case "types":
		return []interface{}{
			dense([]int{4}, []int{1}, 0, []int32{-2147483648, 2147483647, 0, 5}),
			dense([]int{2, 2}, []int{2, 1}, 0, []int8{-128, 127, 0, -1}),
			dense([]int{3}, []int{1}, 0, []uint8{0, 128, 255}),
			dense([]int{2}, []int{1}, 0, []uint16{65535, 1}),
			dense([]int{2}, []int{1}, 0, []complex128{1 + 2i, -0.5}),
			dense([]int{2}, []int{1}, 0, []int64{-(1 << 62), 1 << 62}),
			dense([]int{}, nil, 0, float64(3.25)),
			uint(42), true,
		}
	case "masked":
		d := dense([]int{2, 2}, []int{2, 1}, 0, []float64{1, 2, 3, 4})
		d.mask = []bool{false, true, false, false}
		return []interface{}{d}
	case "view":
		// a 2x2 window on a 2x3 backing array: [[0 1] [3 4]], NonContiguous flag
		return []interface{}{dense([]int{2, 2}, []int{3, 1}, 2, []float64{0, 1, 2, 3, 4, 5})}
	}
	panic("unknown fixture " + name)
}

func write(name, out string) error {
	if name == "shifted" {
		// Another gob user first: every type id in the file moves up.
		if err := gob.NewEncoder(io.Discard).Encode(struct {
			X int
			Y []string
		}{1, []string{"a"}}); err != nil {
			return err
		}
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	enc := gob.NewEncoder(f)
	for _, v := range fixture(name) {
		if err := enc.Encode(v); err != nil {
			return err
		}
	}
	return nil
}

func elements(data interface{}) (string, []string) {
	v := reflect.ValueOf(data)
	format := func(e reflect.Value) string {
		switch e.Kind() {
		case reflect.Float32:
			return strconv.FormatFloat(e.Float(), 'g', -1, 32)
		case reflect.Float64:
			return strconv.FormatFloat(e.Float(), 'g', -1, 64)
		case reflect.Complex128, reflect.Complex64:
			return strconv.FormatComplex(e.Complex(), 'g', -1, 128)
		default:
			return fmt.Sprint(e.Interface())
		}
	}
	if v.Kind() != reflect.Slice {
		return v.Type().String(), []string{format(v)}
	}
	out := make([]string, v.Len())
	for i := range out {
		out[i] = format(v.Index(i))
	}
	return v.Type().String(), out
}

func decode(file string, n int, types []string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	dec := gob.NewDecoder(f)
	var tensors []map[string]interface{}
	for i := 0; i < n; i++ {
		var d Dense
		if err := dec.Decode(&d); err != nil {
			return fmt.Errorf("tensor %d: %w", i, err)
		}
		typ, data := elements(d.data)
		tensors = append(tensors, map[string]interface{}{
			"shape": []int(d.shape), "strides": d.strides, "order": d.o, "triangle": d.Δ,
			"mask": d.mask, "type": typ, "data": data,
		})
	}
	var trailing []interface{}
	for _, t := range types {
		var target interface{}
		switch t {
		case "int":
			target = new(int)
		case "uint":
			target = new(uint)
		case "float64":
			target = new(float64)
		case "string":
			target = new(string)
		case "bool":
			target = new(bool)
		case "[]int":
			target = new([]int)
		case "[]string":
			target = new([]string)
		case "[]float64":
			target = new([]float64)
		case "names":
			target = new(WeightVaultNames)
		case "eof":
			var extra interface{}
			if err := dec.Decode(&extra); err != io.EOF {
				return fmt.Errorf("expected the end of the stream, got a value (err %v)", err)
			}
			continue
		default:
			return fmt.Errorf("unknown type %q", t)
		}
		if err := dec.Decode(target); err != nil {
			return fmt.Errorf("trailing %s: %w", t, err)
		}
		trailing = append(trailing, target)
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]interface{}{"tensors": tensors, "trailing": trailing})
}

func main() {
	var err error
	switch {
	case len(os.Args) == 4 && os.Args[1] == "write":
		err = write(os.Args[2], os.Args[3])
	case len(os.Args) >= 4 && os.Args[1] == "decode":
		var n int
		n, err = strconv.Atoi(os.Args[3])
		if err == nil {
			err = decode(os.Args[2], n, os.Args[4:])
		}
	default:
		err = fmt.Errorf("usage: gobcheck write CASE OUT | gobcheck decode FILE N TYPE...")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gobcheck:", err)
		os.Exit(1)
	}
}
