// AXI-stream slave that collects one frame into a flat register, following a splitrack boundary contract:
// elements in byte-aligned containers of ELEM_BITS bits, packed low lane first, PER_BEAT per beat,
// BEATS beats per frame, tlast on beat BEATS-1 only. `frame` holds element e at [e*ELEM_BITS +: ELEM_BITS].
// The frame is framed by beat count (what a DMA sends); a tlast at any other beat sets the sticky
// framing_error, which the testbench reports.
`timescale 1ns/1ps
module axis_deser #(
    parameter DATA_WIDTH = 32,
    parameter ELEM_BITS  = 16,
    parameter PER_BEAT   = 2,
    parameter BEATS      = 1,
    parameter ELEMS      = 1
) (
    input  wire                        aclk,
    input  wire                        aresetn,
    input  wire [DATA_WIDTH-1:0]       s_axis_tdata,
    input  wire [DATA_WIDTH/8-1:0]     s_axis_tkeep,
    input  wire                        s_axis_tvalid,
    output wire                        s_axis_tready,
    input  wire                        s_axis_tlast,
    output wire [ELEMS*ELEM_BITS-1:0]  frame,
    output reg                         frame_valid,
    input  wire                        frame_take,
    output reg                         framing_error
);
    localparam CW = (BEATS > 1) ? $clog2(BEATS) : 1;
    reg [BEATS*DATA_WIDTH-1:0] beats_q;
    reg [CW-1:0] cnt;

    // A full buffer accepts the first beat of the next frame in the cycle it is taken: no bubble.
    assign s_axis_tready = !frame_valid || frame_take;
    wire hs = s_axis_tvalid && s_axis_tready;

    genvar e;
    generate
        for (e = 0; e < ELEMS; e = e + 1) begin : g_elem
            assign frame[e*ELEM_BITS +: ELEM_BITS] =
                beats_q[(e / PER_BEAT) * DATA_WIDTH + (e % PER_BEAT) * ELEM_BITS +: ELEM_BITS];
        end
    endgenerate

    always @(posedge aclk) begin
        if (!aresetn) begin
            cnt <= 0;
            frame_valid <= 1'b0;
            framing_error <= 1'b0;
        end else begin
            if (frame_take) frame_valid <= 1'b0;
            if (hs) begin
                beats_q[cnt*DATA_WIDTH +: DATA_WIDTH] <= s_axis_tdata;
                if (s_axis_tlast != (cnt == BEATS - 1)) framing_error <= 1'b1;
                if (cnt == BEATS - 1) begin
                    cnt <= 0;
                    frame_valid <= 1'b1;
                end else begin
                    cnt <= cnt + 1'b1;
                end
            end
        end
    end
endmodule
