package main

import (
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"strconv"
	"strings"
)

// plot draws ms/op of create against N for each side (log scale on N), with axis ticks and a legend
// in a tiny built-in pixel font: image/png only, no font or plotting dependency.
func plot(path string, counts []int, res map[string]map[int]result) error {
	const w, h, left, right, top, bottom = 720, 420, 70, 170, 30, 50
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	fill(img, img.Bounds(), color.RGBA{255, 255, 255, 255})
	colors := map[string]color.RGBA{
		"routed":       {200, 30, 30, 255},
		"routed-floor": {240, 150, 150, 255},
		"bridge":       {30, 70, 200, 255},
		"bridge-floor": {140, 170, 240, 255},
	}
	maxY := 0.0
	minN, maxN := math.Inf(1), math.Inf(-1)
	for _, side := range sides {
		for n, r := range res[side] {
			maxY = math.Max(maxY, perOp(r.create, n))
			minN, maxN = math.Min(minN, float64(n)), math.Max(maxN, float64(n))
		}
	}
	if maxY == 0 {
		return nil
	}
	maxY = math.Ceil(maxY*1.1) + 0.5
	if maxN == minN {
		maxN = minN * 10
	}
	x := func(n float64) int {
		return left + int((math.Log(n)-math.Log(minN))/(math.Log(maxN)-math.Log(minN))*float64(w-left-right))
	}
	y := func(v float64) int { return h - bottom - int(v/maxY*float64(h-top-bottom)) }
	black := color.RGBA{0, 0, 0, 255}
	grey := color.RGBA{220, 220, 220, 255}
	// Axes, grid and ticks.
	step := math.Max(1, math.Round(maxY/6))
	for v := 0.0; v <= maxY; v += step {
		line(img, left, y(v), w-right, y(v), grey)
		text(img, left-8-textWidth(strconv.Itoa(int(v))), y(v)-3, strconv.Itoa(int(v)), black)
	}
	line(img, left, top, left, h-bottom, black)
	line(img, left, h-bottom, w-right, h-bottom, black)
	for _, n := range counts {
		line(img, x(float64(n)), h-bottom, x(float64(n)), h-bottom+4, black)
		s := strconv.Itoa(n)
		text(img, x(float64(n))-textWidth(s)/2, h-bottom+8, s, black)
	}
	text(img, (w-right+left)/2-textWidth("n sandboxes")/2, h-bottom+24, "n sandboxes", black)
	text(img, 8, top-20, "create ms/op", black)
	// Lines.
	for i, side := range sides {
		c := colors[side]
		var px, py int
		first := true
		for _, n := range counts {
			r, ok := res[side][n]
			if !ok {
				continue
			}
			cx, cy := x(float64(n)), y(perOp(r.create, n))
			fill(img, image.Rect(cx-3, cy-3, cx+4, cy+4), c)
			if !first {
				thick(img, px, py, cx, cy, c)
			}
			px, py, first = cx, cy, false
		}
		ly := top + 10 + i*18
		fill(img, image.Rect(w-right+15, ly, w-right+35, ly+5), c)
		text(img, w-right+42, ly, side, black)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func fill(img *image.RGBA, r image.Rectangle, c color.RGBA) {
	r = r.Intersect(img.Bounds())
	for yy := r.Min.Y; yy < r.Max.Y; yy++ {
		for xx := r.Min.X; xx < r.Max.X; xx++ {
			img.SetRGBA(xx, yy, c)
		}
	}
}

func line(img *image.RGBA, x0, y0, x1, y1 int, c color.RGBA) {
	dx, dy := abs(x1-x0), -abs(y1-y0)
	sx, sy := sign(x1-x0), sign(y1-y0)
	e := dx + dy
	for {
		img.SetRGBA(x0, y0, c)
		if x0 == x1 && y0 == y1 {
			return
		}
		e2 := 2 * e
		if e2 >= dy {
			e += dy
			x0 += sx
		}
		if e2 <= dx {
			e += dx
			y0 += sy
		}
	}
}

func thick(img *image.RGBA, x0, y0, x1, y1 int, c color.RGBA) {
	for d := -1; d <= 1; d++ {
		line(img, x0, y0+d, x1, y1+d, c)
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

func sign(v int) int {
	switch {
	case v > 0:
		return 1
	case v < 0:
		return -1
	}
	return 0
}

// glyphs is a 3x5 pixel font: five rows of three bits per character.
var glyphs = map[rune][5]string{
	'0': {"111", "101", "101", "101", "111"}, '1': {"010", "110", "010", "010", "111"},
	'2': {"111", "001", "111", "100", "111"}, '3': {"111", "001", "111", "001", "111"},
	'4': {"101", "101", "111", "001", "001"}, '5': {"111", "100", "111", "001", "111"},
	'6': {"111", "100", "111", "101", "111"}, '7': {"111", "001", "010", "010", "010"},
	'8': {"111", "101", "111", "101", "111"}, '9': {"111", "101", "111", "001", "111"},
	'a': {"010", "101", "111", "101", "101"}, 'b': {"110", "101", "110", "101", "110"},
	'c': {"011", "100", "100", "100", "011"}, 'd': {"110", "101", "101", "101", "110"},
	'e': {"111", "100", "110", "100", "111"}, 'f': {"111", "100", "110", "100", "100"},
	'g': {"011", "100", "101", "101", "011"}, 'h': {"101", "101", "111", "101", "101"},
	'i': {"111", "010", "010", "010", "111"}, 'l': {"100", "100", "100", "100", "111"},
	'm': {"101", "111", "111", "101", "101"}, 'n': {"110", "101", "101", "101", "101"},
	'o': {"010", "101", "101", "101", "010"}, 'p': {"110", "101", "110", "100", "100"},
	'r': {"110", "101", "110", "101", "101"}, 's': {"011", "100", "010", "001", "110"},
	't': {"111", "010", "010", "010", "010"}, 'u': {"101", "101", "101", "101", "111"},
	'x': {"101", "101", "010", "101", "101"}, '-': {"000", "000", "111", "000", "000"},
	'/': {"001", "001", "010", "100", "100"}, '.': {"000", "000", "000", "000", "010"},
	' ': {"000", "000", "000", "000", "000"},
}

const scale = 2

func textWidth(s string) int { return len(s) * 4 * scale }

func text(img *image.RGBA, x, y int, s string, c color.RGBA) {
	for i, r := range strings.ToLower(s) {
		g, ok := glyphs[r]
		if !ok {
			g = glyphs[' ']
		}
		for row, bits := range g {
			for col, b := range bits {
				if b == '1' {
					fill(img, image.Rect(x+(i*4+col)*scale, y+row*scale, x+(i*4+col+1)*scale, y+(row+1)*scale), c)
				}
			}
		}
	}
}
