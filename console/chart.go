package console

import (
	"fmt"
	"strconv"
)

// The overview's charts are drawn on the server as inline SVG: no script,
// nothing to fetch, readable without JavaScript. Each bar carries a <title>
// with its figure, and each chart a text summary beside it.

// chart is an SVG drawing the template writes out.
type chart struct {
	Width, Height int
	Label         string
	Bars          []bar
	Texts         []text
}

type bar struct {
	X, Y, W, H int
	// Class picks the bar's colour in the stylesheet.
	Class string
	Title string
}

type text struct {
	X, Y   int
	Anchor string
	Text   string
}

// sessionChart draws sessions opened and ended in five-minute groups over
// the last hour.
func sessionChart(hour []Minute) chart {
	const (
		groups = 12
		width  = 600
		height = 140
		top    = 10
		bottom = 20
		plot   = height - top - bottom
	)
	per := len(hour) / groups
	opened := make([]int, groups)
	ended := make([]int, groups)
	for i, m := range hour {
		g := min(i/per, groups-1)
		opened[g] += m.Opened
		ended[g] += m.Ended
	}
	most := 1
	for g := range groups {
		most = max(most, opened[g], ended[g])
	}
	slot := width / groups
	bw := (slot - 8) / 2
	c := chart{Width: width, Height: height,
		Label: "Sessions opened and ended per five minutes over the last hour; at most " + strconv.Itoa(most) + " in five minutes."}
	for g := range groups {
		x := g*slot + 4
		from := hour[g*per].Start.Format("15:04")
		for j, v := range []int{opened[g], ended[g]} {
			h := v * plot / most
			class, what := "opened", "opened"
			if j == 1 {
				class, what = "ended", "ended"
			}
			c.Bars = append(c.Bars, bar{X: x + j*bw, Y: top + plot - h, W: bw, H: max(h, 1), Class: class,
				Title: fmt.Sprintf("%d %s from %s UTC", v, what, from)})
		}
	}
	c.Texts = []text{
		{X: 2, Y: height - 4, Anchor: "start", Text: hour[0].Start.Format("15:04")},
		{X: width - 2, Y: height - 4, Anchor: "end", Text: "now"},
		{X: 2, Y: top + 10, Anchor: "start", Text: strconv.Itoa(most)},
	}
	return c
}

// outcomeChart draws the refresh outcomes of the last hour as horizontal
// bars.
func outcomeChart(counts []outcomeCount) chart {
	const (
		width = 600
		row   = 26
		label = 110
	)
	most := 1
	for _, o := range counts {
		most = max(most, o.Count)
	}
	c := chart{Width: width, Height: row * len(counts), Label: "Refresh outcomes over the last hour."}
	for i, o := range counts {
		y := i * row
		w := o.Count * (width - label - 60) / most
		c.Bars = append(c.Bars, bar{X: label, Y: y + 4, W: max(w, 1), H: row - 8, Class: "outcome-" + o.Outcome,
			Title: fmt.Sprintf("%d %s", o.Count, o.Outcome)})
		c.Texts = append(c.Texts,
			text{X: label - 8, Y: y + row - 9, Anchor: "end", Text: o.Outcome},
			text{X: label + max(w, 1) + 6, Y: y + row - 9, Anchor: "start", Text: strconv.Itoa(o.Count)})
	}
	return c
}
