// The AXI-stream shell around one partition's datapath (the `core`): deserialise a frame per the input
// contract, hand it to the core with a one-cycle core_start (the core latches core_in then), wait for
// core_done (held until the next core_start, with core_out stable), then serialise core_out per the output
// contract. Three frames can be in flight: one arriving, one in the core, one leaving.
`timescale 1ns/1ps
module axis_shell #(
    parameter DATA_WIDTH    = 32,
    parameter IN_ELEM_BITS  = 16,
    parameter IN_PER_BEAT   = 2,
    parameter IN_BEATS      = 1,
    parameter IN_ELEMS      = 1,
    parameter OUT_ELEM_BITS = 16,
    parameter OUT_PER_BEAT  = 2,
    parameter OUT_BEATS     = 1,
    parameter OUT_ELEMS     = 1,
    parameter OUT_LAST_KEEP = 15,
    parameter MUTANT        = 0
) (
    input  wire                              aclk,
    input  wire                              aresetn,
    input  wire [DATA_WIDTH-1:0]             s_axis_tdata,
    input  wire [DATA_WIDTH/8-1:0]           s_axis_tkeep,
    input  wire                              s_axis_tvalid,
    output wire                              s_axis_tready,
    input  wire                              s_axis_tlast,
    output wire [DATA_WIDTH-1:0]             m_axis_tdata,
    output wire [DATA_WIDTH/8-1:0]           m_axis_tkeep,
    output wire                              m_axis_tvalid,
    input  wire                              m_axis_tready,
    output wire                              m_axis_tlast,
    output wire [IN_ELEMS*IN_ELEM_BITS-1:0]  core_in,
    output wire                              core_start,
    input  wire [OUT_ELEMS*OUT_ELEM_BITS-1:0] core_out,
    input  wire                              core_done,
    output wire                              framing_error
);
    wire [IN_ELEMS*IN_ELEM_BITS-1:0] in_frame;
    wire in_valid, in_take, out_take;
    reg running;

    axis_deser #(.DATA_WIDTH(DATA_WIDTH), .ELEM_BITS(IN_ELEM_BITS), .PER_BEAT(IN_PER_BEAT),
                 .BEATS(IN_BEATS), .ELEMS(IN_ELEMS)) u_deser (
        .aclk(aclk), .aresetn(aresetn),
        .s_axis_tdata(s_axis_tdata), .s_axis_tkeep(s_axis_tkeep), .s_axis_tvalid(s_axis_tvalid),
        .s_axis_tready(s_axis_tready), .s_axis_tlast(s_axis_tlast),
        .frame(in_frame), .frame_valid(in_valid), .frame_take(in_take), .framing_error(framing_error));

    axis_ser #(.DATA_WIDTH(DATA_WIDTH), .ELEM_BITS(OUT_ELEM_BITS), .PER_BEAT(OUT_PER_BEAT),
               .BEATS(OUT_BEATS), .ELEMS(OUT_ELEMS), .LAST_KEEP(OUT_LAST_KEEP), .MUTANT(MUTANT)) u_ser (
        .aclk(aclk), .aresetn(aresetn),
        .frame(core_out), .frame_valid(running && core_done), .frame_take(out_take),
        .m_axis_tdata(m_axis_tdata), .m_axis_tkeep(m_axis_tkeep), .m_axis_tvalid(m_axis_tvalid),
        .m_axis_tready(m_axis_tready), .m_axis_tlast(m_axis_tlast));

    // The core takes a new frame when it is idle, or in the cycle its result moves to the serialiser.
    assign in_take = in_valid && (!running || out_take);
    assign core_in = in_frame;
    assign core_start = in_take;

    always @(posedge aclk) begin
        if (!aresetn) running <= 1'b0;
        else if (in_take) running <= 1'b1;
        else if (out_take) running <= 1'b0;
    end
endmodule
