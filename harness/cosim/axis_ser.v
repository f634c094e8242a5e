// AXI-stream master that sends one frame held in a flat register as BEATS beats, following a splitrack
// boundary contract: low lane first, unused lanes of the last beat zero, tkeep = LAST_KEEP on the last beat
// (full otherwise), tlast on beat BEATS-1 only. tdata/tkeep/tlast stay put while tvalid waits for tready.
// MUTANT is for the checker's own tests: 1 raises tlast one beat early, 2 ignores m_axis_tready.
`timescale 1ns/1ps
module axis_ser #(
    parameter DATA_WIDTH = 32,
    parameter ELEM_BITS  = 16,
    parameter PER_BEAT   = 2,
    parameter BEATS      = 1,
    parameter ELEMS      = 1,
    parameter LAST_KEEP  = 15,
    parameter MUTANT     = 0
) (
    input  wire                        aclk,
    input  wire                        aresetn,
    input  wire [ELEMS*ELEM_BITS-1:0]  frame,
    input  wire                        frame_valid,
    output wire                        frame_take,
    output wire [DATA_WIDTH-1:0]       m_axis_tdata,
    output wire [DATA_WIDTH/8-1:0]     m_axis_tkeep,
    output wire                        m_axis_tvalid,
    input  wire                        m_axis_tready,
    output wire                        m_axis_tlast
);
    localparam CW = (BEATS > 1) ? $clog2(BEATS) : 1;
    localparam LANES = BEATS * PER_BEAT;
    reg [BEATS*DATA_WIDTH-1:0] beats_q;
    wire [BEATS*DATA_WIDTH-1:0] beats_d;
    reg [CW-1:0] cnt;
    reg busy;

    genvar l;
    generate
        for (l = 0; l < LANES; l = l + 1) begin : g_lane
            if (l < ELEMS) begin : g_used
                assign beats_d[(l / PER_BEAT) * DATA_WIDTH + (l % PER_BEAT) * ELEM_BITS +: ELEM_BITS] =
                    frame[l*ELEM_BITS +: ELEM_BITS];
            end else begin : g_pad
                assign beats_d[(l / PER_BEAT) * DATA_WIDTH + (l % PER_BEAT) * ELEM_BITS +: ELEM_BITS] = 0;
            end
        end
        if (DATA_WIDTH > PER_BEAT * ELEM_BITS) begin : g_gap  // bytes above the last lane of every beat
            genvar b;
            for (b = 0; b < BEATS; b = b + 1) begin : g_beat
                assign beats_d[b*DATA_WIDTH + PER_BEAT*ELEM_BITS +: DATA_WIDTH - PER_BEAT*ELEM_BITS] = 0;
            end
        end
    endgenerate

    wire ready = (MUTANT == 2) ? 1'b1 : m_axis_tready;
    wire last_beat = (cnt == BEATS - 1);
    wire done = busy && ready && last_beat;
    // Take the next frame in the cycle the last beat of this one leaves: back-to-back frames, no bubble.
    assign frame_take = frame_valid && (!busy || done);

    assign m_axis_tvalid = busy;
    assign m_axis_tdata  = beats_q[cnt*DATA_WIDTH +: DATA_WIDTH];
    assign m_axis_tlast  = (MUTANT == 1 && BEATS > 1) ? (cnt == BEATS - 2) : last_beat;
    assign m_axis_tkeep  = last_beat ? LAST_KEEP[DATA_WIDTH/8-1:0] : {(DATA_WIDTH/8){1'b1}};

    always @(posedge aclk) begin
        if (!aresetn) begin
            busy <= 1'b0;
            cnt <= 0;
        end else begin
            if (busy && ready) cnt <= last_beat ? 0 : cnt + 1'b1;
            if (frame_take) begin
                beats_q <= beats_d;
                busy <= 1'b1;
                cnt <= 0;
            end else if (done) begin
                busy <= 1'b0;
            end
        end
    end
endmodule
